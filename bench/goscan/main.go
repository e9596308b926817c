// Command goscan is certscan's Go baseline: the class of Go scanners (tlsx, zgrab2) on
// Go's own TLS stack, standard library only.
//
//	goscan -ca CA.pem -out OUT.jsonl [-concurrency 100] [-timeout 5] TARGETS
//
// TARGETS holds host:port lines (blank lines and #comments skipped), as bench/baselines.py
// reads them. Each of -concurrency goroutines takes the next target, dials it and completes
// a TLS handshake under one deadline (-timeout seconds for both), resets the connection
// (SO_LINGER 0, like the baselines' --close abort), then verifies the chain with
// crypto/x509 against -ca. One JSON line per target goes to -out, in completion order;
// a JSON summary goes to stdout.
package main

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Error is a failed target's error: a coarse class and Go's own message.
type Error struct {
	Type    string `json:"type"` // timeout, refused, reset, closed, tls_alert, tls, other
	Message string `json:"message"`
}

// Record is one output line.
type Record struct {
	Target      string   `json:"target"`
	Status      string   `json:"status"` // ok or error
	Error       *Error   `json:"error"`
	TLSVersion  string   `json:"tls_version,omitempty"`
	Cipher      string   `json:"cipher,omitempty"`
	LeafPEM     string   `json:"leaf_pem,omitempty"`
	ChainSHA256 []string `json:"chain_sha256,omitempty"` // the chain as the server sent it
	Trusted     *bool    `json:"trusted,omitempty"`
	VerifyError string   `json:"verify_error,omitempty"`
}

type target struct{ host, port string }

func readTargets(path string) ([]target, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var targets []target
	for _, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndex(line, ":")
		if i < 0 {
			return nil, fmt.Errorf("%s: no port in %q", path, line)
		}
		// "[::1]:443" -> "::1": the address to dial and the name to verify.
		host := strings.TrimSuffix(strings.TrimPrefix(line[:i], "["), "]")
		targets = append(targets, target{host, line[i+1:]})
	}
	return targets, nil
}

var versions = map[uint16]string{
	tls.VersionTLS10: "TLSv1", tls.VersionTLS11: "TLSv1.1",
	tls.VersionTLS12: "TLSv1.2", tls.VersionTLS13: "TLSv1.3",
}

// classify maps an error to the classes bench/baselines.py uses (plus closed, tls_alert).
func classify(err error) string {
	var netErr net.Error
	var opErr *net.OpError
	switch {
	case errors.As(err, &netErr) && netErr.Timeout(), errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		return "tls_alert" // Go 1.19 wraps the peer's alert so; tls.AlertError is 1.21+
	case strings.HasPrefix(err.Error(), "tls: "):
		return "tls"
	}
	return "other"
}

// scan handshakes with one target and judges its chain.
func scan(t target, timeout time.Duration, roots *x509.CertPool) Record {
	addr := net.JoinHostPort(t.host, t.port)
	rec := Record{Target: addr, Status: "error"}
	fail := func(err error) Record {
		rec.Error = &Error{Type: classify(err), Message: err.Error()}
		return rec
	}
	deadline := time.Now().Add(timeout)
	raw, err := (&net.Dialer{Deadline: deadline}).Dial("tcp", addr)
	if err != nil {
		return fail(err)
	}
	// Reset rather than close politely: no close_notify, no FIN handshake, no TIME_WAIT.
	defer func() {
		if tcp, ok := raw.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		raw.Close()
	}()
	if err := raw.SetDeadline(deadline); err != nil {
		return fail(err)
	}
	conn := tls.Client(raw, &tls.Config{
		ServerName: t.host, // Go sends no SNI for an IP literal, as Python's ssl does not
		MinVersion: tls.VersionTLS10,
		// Go's verification needs the handshake to succeed; ours runs after it, so that an
		// untrusted chain is still a certificate we recorded.
		InsecureSkipVerify: true,
	})
	if err := conn.Handshake(); err != nil {
		return fail(err)
	}
	state := conn.ConnectionState()
	certs := state.PeerCertificates
	if len(certs) == 0 {
		return fail(errors.New("tls: no certificate from the server"))
	}
	rec.Status = "ok"
	rec.TLSVersion = versions[state.Version]
	rec.Cipher = tls.CipherSuiteName(state.CipherSuite)
	rec.LeafPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs[0].Raw}))
	for _, cert := range certs {
		sum := sha256.Sum256(cert.Raw)
		rec.ChainSHA256 = append(rec.ChainSHA256, hex.EncodeToString(sum[:]))
	}
	intermediates := x509.NewCertPool()
	for _, cert := range certs[1:] {
		intermediates.AddCert(cert)
	}
	_, err = certs[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: intermediates, DNSName: t.host,
	})
	trusted := err == nil
	rec.Trusted = &trusted
	if err != nil {
		rec.VerifyError = err.Error()
	}
	return rec
}

func main() {
	concurrency := flag.Int("concurrency", 100, "targets in flight")
	timeout := flag.Float64("timeout", 5, "seconds for dial and handshake together, per target")
	caFile := flag.String("ca", "", "PEM bundle of trusted roots (required)")
	outFile := flag.String("out", "", "JSON lines, one per target (required)")
	flag.Parse()
	if flag.NArg() != 1 || *caFile == "" || *outFile == "" || *concurrency < 1 {
		fmt.Fprintln(os.Stderr, "usage: goscan -ca FILE -out FILE [-concurrency N] [-timeout S] TARGETS")
		os.Exit(2)
	}
	targets, err := readTargets(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "goscan:", err)
		os.Exit(2)
	}
	bundle, err := os.ReadFile(*caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goscan:", err)
		os.Exit(2)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		fmt.Fprintf(os.Stderr, "goscan: no certificate in %s\n", *caFile)
		os.Exit(2)
	}
	out, err := os.Create(*outFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goscan:", err)
		os.Exit(2)
	}

	started := time.Now()
	perTarget := time.Duration(*timeout * float64(time.Second))
	jobs := make(chan target)
	results := make(chan Record, *concurrency)
	var workers sync.WaitGroup
	for i := 0; i < *concurrency && i < len(targets); i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for t := range jobs {
				results <- scan(t, perTarget, roots)
			}
		}()
	}
	go func() {
		for _, t := range targets {
			jobs <- t
		}
		close(jobs)
		workers.Wait()
		close(results)
	}()

	// One writer: records are encoded and buffered here, in completion order.
	writer := bufio.NewWriterSize(out, 1<<16)
	encoder := json.NewEncoder(writer)
	encoder.SetEscapeHTML(false)
	counts := map[string]int{}
	for rec := range results {
		if rec.Error != nil {
			counts[rec.Error.Type]++
		} else {
			counts["ok"]++
		}
		if err := encoder.Encode(&rec); err != nil {
			fmt.Fprintln(os.Stderr, "goscan:", err)
			os.Exit(1)
		}
	}
	if err := writer.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "goscan:", err)
		os.Exit(1)
	}
	if err := out.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "goscan:", err)
		os.Exit(1)
	}
	summary, _ := json.Marshal(map[string]any{
		"targets": len(targets), "elapsed_s": time.Since(started).Seconds(), "status": counts,
	})
	fmt.Println(string(summary))
}
