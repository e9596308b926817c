"""The nightly inventory: tools that read result files (JSON lines that `certscan scan`
wrote) and tell a team what changed, what expires and what to act on."""
