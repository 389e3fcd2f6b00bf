// loadgen: the WebSocket load generator behind bench/run.py.
//
// One process, one workload per run, one JSON line on stdout with the figure, the
// generator's own CPU use and (given -server-pid) the server's, measured over the same
// window, so a client-bound result is visible. Progress and errors go to stderr.
//
// It speaks three dialects of the same service (-proto):
//
//	wsapp   wsapp's contract: a JWT per connection (HS256, minted here), chat JSON envelopes
//	plain   bench/peers/flask_sock_app.py: same JSON, no token
//	sio     bench/peers/socketio_app.py: Engine.IO 4 / Socket.IO 5 over a bare WebSocket
//
// Workloads (-workload): echo, latency, handshake, idle, fanout, storm. Every loop is bounded
// by -duration or -rounds and a timeout; everything talks to the -url given (loopback).
//
// Built from Debian's golang-go and golang-github-gorilla-websocket-dev only:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o bench/.build/loadgen ./bench/loadgen
package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

var (
	workload   = flag.String("workload", "echo", "echo | latency | handshake | idle | fanout | storm")
	baseURL    = flag.String("url", "ws://127.0.0.1:8000", "ws:// base of the server")
	proto      = flag.String("proto", "wsapp", "wsapp | plain | sio")
	secret     = flag.String("secret", "", "HS256 secret for wsapp tokens")
	conns      = flag.Int("conns", 50, "connections (echo), concurrent dialers (handshake), connections (idle)")
	duration   = flag.Duration("duration", 5*time.Second, "measured window (echo, latency, handshake)")
	warmup     = flag.Duration("warmup", time.Second, "unmeasured run before the window")
	size       = flag.Int("size", 64, "payload bytes (echo: the message; fanout: the broadcast data)")
	subs       = flag.Int("subs", 1000, "fanout: subscribers")
	rounds     = flag.Int("rounds", 20, "fanout: measured broadcasts, one at a time")
	via        = flag.String("via", "chat", "fanout: chat (a client's broadcast frame) | http (POST /api/broadcast)")
	stuck      = flag.Int("stuck", 0, "fanout: subscribers that never read (tiny receive buffer)")
	fill       = flag.Int("fill", 150, "fanout with -stuck: large broadcasts sent before the others join, to fill the stuck one's buffers")
	fillSize   = flag.Int("fill-size", 32000, "fanout with -stuck: bytes of each fill broadcast")
	evictAfter = flag.Int("evict-after", 300, "fanout with -stuck: broadcasts sent after the measured rounds, so a bounded queue must overflow")
	roundWait  = flag.Duration("round-timeout", 10*time.Second, "fanout: give up on one broadcast after this")
	serverPID  = flag.Int("server-pid", 0, "measure this process's CPU over the same window")
	depth      = flag.Int("depth", 1, "echo: messages in flight per connection (1: send, wait for the echo, repeat)")
	holdMax    = flag.Duration("hold", 120*time.Second, "idle: hold the connections at most this long")
	stormRoute = flag.String("storm-route", "chat", "storm: chat (ready at its welcome) | echo (ready after one echo)")
	dialers    = flag.Int("dialers", 500, "storm: concurrent dialers (each client reconnects as soon as it can)")
	stormMax   = flag.Duration("storm-timeout", 120*time.Second, "storm: give up on the reconnect after this")
)

// ---- tokens ------------------------------------------------------------------------

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mintToken(sub string, admin bool) string {
	claims := map[string]interface{}{"sub": sub, "iat": time.Now().Unix(), "exp": time.Now().Add(2 * time.Hour).Unix()}
	if admin {
		claims["roles"] = []string{"admin"}
	}
	body, _ := json.Marshal(claims)
	signing := b64([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + b64(body)
	mac := hmac.New(sha256.New, []byte(*secret))
	mac.Write([]byte(signing))
	return signing + "." + b64(mac.Sum(nil))
}

// ---- one connection, in any dialect --------------------------------------------------

type Conn struct {
	ws *websocket.Conn
}

var dialer = &websocket.Dialer{HandshakeTimeout: 15 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 4096}

var smallBufDialer = &websocket.Dialer{
	HandshakeTimeout: 15 * time.Second,
	NetDial: func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048)
			})
		}}
		return d.Dial(network, addr)
	},
}

// dial opens route ("echo" or "chat") as client id and returns once the connection is
// usable: wsapp chat has sent its welcome, Socket.IO has acknowledged the namespace.
func dial(route, id string, d *websocket.Dialer) (*Conn, error) {
	h := http.Header{}
	var u string
	switch *proto {
	case "wsapp":
		h.Set("Authorization", "Bearer "+mintTokenCached(id))
		u = *baseURL + "/ws/" + route
	case "plain":
		u = *baseURL + "/ws/" + route + "?id=" + id
	case "sio":
		u = *baseURL + "/socket.io/?EIO=4&transport=websocket"
	}
	ws, resp, err := d.Dial(u, h)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
			return nil, fmt.Errorf("%v: %d %s", err, resp.StatusCode, body)
		}
		return nil, err
	}
	c := &Conn{ws: ws}
	ws.SetReadDeadline(time.Now().Add(15 * time.Second))
	defer ws.SetReadDeadline(time.Time{})
	switch {
	case *proto == "sio":
		if _, m, err := ws.ReadMessage(); err != nil || len(m) == 0 || m[0] != '0' {
			ws.Close()
			return nil, fmt.Errorf("engine.io open: %q %v", m, err)
		}
		if err := ws.WriteMessage(websocket.TextMessage, []byte("40")); err != nil {
			ws.Close()
			return nil, err
		}
		if m, err := c.Recv(); err != nil || !bytes.HasPrefix(m, []byte("40")) {
			ws.Close()
			return nil, fmt.Errorf("socket.io connect: %q %v", m, err)
		}
	case route == "chat": // wsapp and plain greet a chat connection once it is registered
		if m, err := c.Recv(); err != nil || !bytes.Contains(m, []byte(`"welcome"`)) {
			ws.Close()
			return nil, fmt.Errorf("welcome: %q %v", m, err)
		}
	}
	return c, nil
}

var tokenCache sync.Map

func mintTokenCached(id string) string {
	if t, ok := tokenCache.Load(id); ok {
		return t.(string)
	}
	t := mintToken(id, false)
	tokenCache.Store(id, t)
	return t
}

// Recv returns the next application message; Engine.IO pings are answered on the way.
func (c *Conn) Recv() ([]byte, error) {
	for {
		_, m, err := c.ws.ReadMessage()
		if err != nil {
			return nil, err
		}
		if *proto == "sio" && len(m) == 1 && m[0] == '2' {
			if err := c.ws.WriteMessage(websocket.TextMessage, []byte("3")); err != nil {
				return nil, err
			}
			continue
		}
		return m, nil
	}
}

func (c *Conn) Send(m []byte) error { return c.ws.WriteMessage(websocket.TextMessage, m) }

// Abort closes the TCP connection with a reset: no TIME_WAIT left on the loopback ports.
func (c *Conn) Abort() {
	if tc, ok := c.ws.UnderlyingConn().(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.ws.Close()
}

// CloseClean sends a close frame and waits (bounded) for the server's, then resets.
func (c *Conn) CloseClean() {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(2*time.Second))
	c.ws.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := c.ws.ReadMessage(); err != nil {
			break
		}
	}
	c.Abort()
}

func echoFrame(payload string) []byte {
	if *proto == "sio" {
		return []byte(`42["echo","` + payload + `"]`)
	}
	return []byte(payload)
}

func broadcastFrame(data string) []byte {
	if *proto == "sio" {
		return []byte(`42["broadcast","` + data + `"]`)
	}
	return []byte(`{"type":"broadcast","data":"` + data + `"}`)
}

// ---- CPU accounting ------------------------------------------------------------------

type cpuMark struct {
	at        time.Time
	self, srv float64 // seconds of CPU
}

func procCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / 100.0 // USER_HZ
}

func markCPU() cpuMark {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	return cpuMark{time.Now(), self, procCPU(*serverPID)}
}

// percent of one core used by the generator and the server between two marks
func cpuSince(m cpuMark) (gen, srv float64) {
	n := markCPU()
	wall := n.at.Sub(m.at).Seconds()
	return 100 * (n.self - m.self) / wall, 100 * (n.srv - m.srv) / wall
}

// ---- result --------------------------------------------------------------------------

type Result map[string]interface{}

func emit(r Result) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", a...)
	emit(Result{"workload": *workload, "error": fmt.Sprintf(format, a...)})
	os.Exit(1)
}

func randomText(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

// dialMany opens n connections with `workers` concurrent dialers.
func dialMany(n, workers int, route, prefix string, d *websocket.Dialer) ([]*Conn, float64, error) {
	out := make([]*Conn, n)
	var next int64 = -1
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= n || firstErr.Load() != nil {
					return
				}
				c, err := dial(route, fmt.Sprintf("%s%d", prefix, i), d)
				if err != nil {
					firstErr.Store(fmt.Errorf("connection %d: %w", i, err))
					return
				}
				out[i] = c
			}
		}()
	}
	wg.Wait()
	rate := float64(n) / time.Since(start).Seconds()
	if e := firstErr.Load(); e != nil {
		for _, c := range out {
			if c != nil {
				c.Abort()
			}
		}
		return nil, rate, e.(error)
	}
	return out, rate, nil
}

// ---- workloads -----------------------------------------------------------------------

var echoErr atomic.Value

func runEcho() {
	d := dialer
	if *size > 4000 {
		// one frame per message, as browsers and python websockets send it (gorilla
		// would cut it into frames of its write buffer's size)
		d = &websocket.Dialer{HandshakeTimeout: 15 * time.Second, ReadBufferSize: *size + 64, WriteBufferSize: *size + 64}
	}
	cs, _, err := dialMany(*conns, 16, "echo", "e", d)
	if err != nil {
		fail("dial: %v", err)
	}
	payload := randomText(*size)
	frame := echoFrame(payload)
	var count int64
	var measuring, stop int32
	var errs int64
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func(c *Conn) {
			defer wg.Done()
			for k := 1; k < *depth; k++ { // the extra messages in flight, topped up one per echo
				if err := c.Send(frame); err != nil {
					atomic.AddInt64(&errs, 1)
					return
				}
			}
			for atomic.LoadInt32(&stop) == 0 {
				if err := c.Send(frame); err != nil {
					atomic.AddInt64(&errs, 1)
					return
				}
				m, err := c.Recv()
				if err != nil || len(m) != len(frame) {
					atomic.AddInt64(&errs, 1)
					echoErr.Store(fmt.Sprintf("echo of %d bytes: got %d: %v", len(frame), len(m), err))
					return
				}
				if atomic.LoadInt32(&measuring) == 1 {
					atomic.AddInt64(&count, 1)
				}
			}
		}(c)
	}
	time.Sleep(*warmup)
	mark := markCPU()
	atomic.StoreInt32(&measuring, 1)
	time.Sleep(*duration)
	atomic.StoreInt32(&measuring, 0)
	n := atomic.LoadInt64(&count)
	gen, srv := cpuSince(mark)
	atomic.StoreInt32(&stop, 1)
	for _, c := range cs {
		c.ws.SetReadDeadline(time.Now().Add(3 * time.Second))
	}
	wg.Wait()
	for _, c := range cs {
		c.Abort()
	}
	r := Result{"workload": "echo", "value": float64(n) / duration.Seconds(), "unit": "msg/s",
		"conns": *conns, "depth": *depth, "gen_cpu": gen, "srv_cpu": srv, "errors": errs}
	if e := echoErr.Load(); e != nil {
		r["last_error"] = e
	}
	if errs > 0 && n == 0 {
		r["error"] = "every connection failed"
	}
	emit(r)
}

func runLatency() {
	c, err := dial("echo", "lat", dialer)
	if err != nil {
		fail("dial: %v", err)
	}
	defer c.Abort()
	frame := echoFrame(randomText(*size))
	var samples []float64
	end := time.Now().Add(*warmup)
	measure := false
	var mark cpuMark
	for {
		now := time.Now()
		if now.After(end) {
			if measure {
				break
			}
			measure, end, mark = true, now.Add(*duration), markCPU()
		}
		t0 := time.Now()
		if err := c.Send(frame); err != nil {
			fail("send: %v", err)
		}
		if _, err := c.Recv(); err != nil {
			fail("recv: %v", err)
		}
		if measure {
			samples = append(samples, float64(time.Since(t0).Nanoseconds())/1e3)
		}
	}
	gen, srv := cpuSince(mark)
	emit(Result{"workload": "latency", "value": percentile(samples, 0.5), "unit": "us",
		"p99": percentile(samples, 0.99), "samples": len(samples), "gen_cpu": gen, "srv_cpu": srv})
}

func runHandshake() {
	var count, errs int64
	var measuring, stop int32
	var lastErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			id := fmt.Sprintf("h%d", w)
			for atomic.LoadInt32(&stop) == 0 {
				c, err := dial("echo", id, dialer)
				if err != nil {
					atomic.AddInt64(&errs, 1)
					lastErr.Store(err.Error())
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if atomic.LoadInt32(&measuring) == 1 {
					atomic.AddInt64(&count, 1)
				}
				c.CloseClean()
			}
		}(w)
	}
	time.Sleep(*warmup)
	mark := markCPU()
	atomic.StoreInt32(&measuring, 1)
	time.Sleep(*duration)
	atomic.StoreInt32(&measuring, 0)
	n := atomic.LoadInt64(&count)
	gen, srv := cpuSince(mark)
	atomic.StoreInt32(&stop, 1)
	wg.Wait()
	r := Result{"workload": "handshake", "value": float64(n) / duration.Seconds(), "unit": "handshakes/s",
		"concurrency": *conns, "gen_cpu": gen, "srv_cpu": srv, "errors": errs}
	if e := lastErr.Load(); e != nil {
		r["last_error"] = e
	}
	emit(r)
}

// idle: open -conns chat connections, say READY, hold them until stdin says anything.
func runIdle() {
	cs, rate, err := dialMany(*conns, 32, "chat", "i", dialer)
	if err != nil {
		fail("dial: %v", err)
	}
	for _, c := range cs { // keep answering Engine.IO pings; nothing else arrives
		go func(c *Conn) {
			for {
				if _, err := c.Recv(); err != nil {
					return
				}
			}
		}(c)
	}
	fmt.Fprintf(os.Stderr, "READY %d\n", len(cs))
	fmt.Println(`{"ready": true}`)
	done := make(chan struct{})
	go func() { _, _ = bufio.NewReader(os.Stdin).ReadString('\n'); close(done) }()
	select {
	case <-done:
	case <-time.After(*holdMax):
	}
	for _, c := range cs {
		c.Abort()
	}
	emit(Result{"workload": "idle", "conns": len(cs), "connect_rate": rate})
}

// fanout: -subs subscribers; -rounds broadcasts one at a time, each timed from the
// send until the last subscriber has it. With -stuck, that many extra subscribers
// never read, and -fill broadcasts go out first (in windows the readers keep up with)
// so that the stuck ones' socket buffers and server-side queues are full when the
// measured rounds start.
func runFanout() {
	total := *rounds + 1
	if *stuck > 0 {
		total += *evictAfter + 20
	}
	counts := make([]int32, total)
	doneAt := make([]int64, total)
	doneCh := make([]chan struct{}, total)
	for i := range doneCh {
		doneCh[i] = make(chan struct{})
	}
	target := int32(*subs)
	var stray int64

	// with -stuck, the never-reading subscribers and the sender come first, and -fill
	// large broadcasts fill the stuck ones' socket buffers before anyone else is there
	// to pay for them; the measured subscribers join afterwards.
	var stuckConns []*Conn
	var err error
	if *stuck > 0 {
		stuckConns, _, err = dialMany(*stuck, 4, "chat", "stuck", smallBufDialer)
		if err != nil {
			fail("stuck subscribers: %v", err)
		}
	}
	var sender *Conn
	var senderEnd atomic.Value
	var httpClient *http.Client
	var adminToken string
	httpBase := "http" + strings.TrimPrefix(*baseURL, "ws")
	if *via == "chat" || *stuck > 0 {
		sender, err = dial("chat", "sender", dialer)
		if err != nil {
			fail("sender: %v", err)
		}
		go func() { // the sender may get its own broadcasts: read and drop them
			for {
				if _, err := sender.Recv(); err != nil {
					senderEnd.Store(err.Error())
					return
				}
			}
		}()
	}
	if *via == "http" {
		httpClient = &http.Client{Timeout: 30 * time.Second}
		adminToken = mintToken("bench-admin", true)
	}
	if *stuck > 0 {
		big := randomText(*fillSize)
		fmt.Fprintf(os.Stderr, "fanout: filling the stuck subscriber: %d broadcasts of %d bytes\n", *fill, *fillSize)
		for k := 0; k < *fill; k++ {
			if err := sender.Send(broadcastFrame(big)); err != nil {
				fail("fill: %v", err)
			}
		}
		time.Sleep(time.Second)
	}

	fmt.Fprintf(os.Stderr, "fanout: connecting %d subscribers\n", *subs)
	cs, connRate, err := dialMany(*subs, 64, "chat", "s", dialer)
	if err != nil {
		fail("subscribers: %v", err)
	}
	reader := func(c *Conn) {
		for {
			m, err := c.Recv()
			if err != nil {
				return
			}
			i := bytes.IndexByte(m, '#')
			if i < 0 || i+7 > len(m) {
				atomic.AddInt64(&stray, 1)
				continue
			}
			seq, err := strconv.Atoi(string(m[i+1 : i+7]))
			if err != nil || seq >= total {
				atomic.AddInt64(&stray, 1)
				continue
			}
			if atomic.AddInt32(&counts[seq], 1) == target {
				atomic.StoreInt64(&doneAt[seq], time.Now().UnixNano())
				close(doneCh[seq])
			}
		}
	}
	for _, c := range cs {
		go reader(c)
	}
	pad := randomText(*size)
	send := func(seq int) error {
		data := fmt.Sprintf("#%06d#", seq) + pad[:*size-8]
		if *via == "chat" {
			if err := sender.Send(broadcastFrame(data)); err != nil {
				return fmt.Errorf("%v (the server ended the sender's connection: %v)", err, senderEnd.Load())
			}
			return nil
		}
		req, _ := http.NewRequest("POST", httpBase+"/api/broadcast", strings.NewReader(`{"data":"`+data+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("POST /api/broadcast: %d", resp.StatusCode)
		}
		return nil
	}
	time.Sleep(500 * time.Millisecond)
	seq := 0

	var lat []float64
	ok := 0
	mark := markCPU()
	for r := 0; r < *rounds; r++ {
		t0 := time.Now()
		if err := send(seq); err != nil {
			fail("send: %v", err)
		}
		select {
		case <-doneCh[seq]:
			ok++
			lat = append(lat, float64(atomic.LoadInt64(&doneAt[seq])-t0.UnixNano())/1e6)
		case <-time.After(*roundWait):
			fmt.Fprintf(os.Stderr, "fanout: round %d: only %d of %d subscribers got it in %v\n",
				r, atomic.LoadInt32(&counts[seq]), target, *roundWait)
		}
		seq++
		if ok == 0 && r >= 2 {
			break // stalled for good: do not wait out every round
		}
		time.Sleep(20 * time.Millisecond)
	}
	gen, srv := cpuSince(mark)

	// with -stuck: keep broadcasting, in windows the readers keep up with, until the
	// stuck one's server-side queue must have overflowed (-evict-after more messages)
	afterOK, afterRounds := 0, 0
	if *stuck > 0 && ok > 0 {
		const window = 20
		for sent := 0; sent < *evictAfter && seq+window <= total; {
			first := seq
			for k := 0; k < window; k++ {
				if err := send(seq); err != nil {
					fail("send: %v", err)
				}
				seq++
			}
			sent += window
			afterRounds++
			stalled := false
			for s := first; s < seq && !stalled; s++ {
				select {
				case <-doneCh[s]:
				case <-time.After(*roundWait):
					stalled = true
				}
			}
			if stalled {
				break
			}
			afterOK++
		}
	}

	res := Result{"workload": "fanout", "via": *via, "subs": *subs, "rounds": *rounds, "rounds_ok": ok,
		"connect_rate": connRate, "gen_cpu": gen, "srv_cpu": srv, "stray": atomic.LoadInt64(&stray), "unit": "ms"}
	if len(lat) > 0 {
		res["value"] = percentile(lat, 0.5)
		res["p90"] = percentile(lat, 0.9)
		res["max"] = percentile(lat, 1)
	} else {
		res["error"] = "no broadcast reached every subscriber"
	}
	if *stuck > 0 {
		res["windows_after"] = afterRounds
		res["windows_after_ok"] = afterOK
		// did the server let go of the stuck subscriber? read what it holds for us
		evicted, stuckEnd := 0, ""
		var wgS sync.WaitGroup
		var mu sync.Mutex
		for _, c := range stuckConns {
			wgS.Add(1)
			go func(c *Conn) {
				defer wgS.Done()
				c.ws.SetReadDeadline(time.Now().Add(3 * time.Second))
				for {
					_, _, err := c.ws.ReadMessage()
					if err == nil {
						continue
					}
					var ce *websocket.CloseError
					var ne net.Error
					mu.Lock()
					if errors.As(err, &ce) || !(errors.As(err, &ne) && ne.Timeout()) {
						evicted++
					}
					stuckEnd = err.Error()
					mu.Unlock()
					return
				}
			}(c)
		}
		wgS.Wait()
		res["stuck_evicted"] = evicted
		res["stuck_end"] = stuckEnd
	}
	emit(res)
	for _, c := range append(cs, stuckConns...) {
		c.Abort()
	}
	if sender != nil {
		sender.Abort()
	}
}

// storm: -conns clients connected (chat: welcomed; echo: one echo answered), all
// dropped at once (TCP reset, no close handshake: a network blip or a proxy restart),
// then every one reconnects at once with -dialers dialing concurrently, a refused or
// failed attempt retried at once. The figure: seconds from the drop until every client
// is ready again (chat: its welcome; echo: its first echo back).
func runStorm() {
	n := *conns
	ready := func(i int) error {
		c, err := dial(*stormRoute, fmt.Sprintf("r%d", i), dialer)
		if err != nil {
			return err
		}
		if *stormRoute == "echo" {
			frame := echoFrame("ping")
			c.ws.SetReadDeadline(time.Now().Add(15 * time.Second))
			if err := c.Send(frame); err != nil {
				c.Abort()
				return err
			}
			if m, err := c.Recv(); err != nil || len(m) != len(frame) {
				c.Abort()
				return fmt.Errorf("echo: %q %v", m, err)
			}
			c.ws.SetReadDeadline(time.Time{})
		}
		stormConns[i] = c
		return nil
	}
	stormConns = make([]*Conn, n)
	// every client reconnects until it is ready or the storm's deadline passes
	connectAll := func(deadline time.Time) (retries int64, lastErr string) {
		var next int64 = -1
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := 0; w < *dialers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(atomic.AddInt64(&next, 1))
					if i >= n {
						return
					}
					for {
						err := ready(i)
						if err == nil {
							break
						}
						atomic.AddInt64(&retries, 1)
						mu.Lock()
						lastErr = err.Error()
						mu.Unlock()
						if time.Now().After(deadline) {
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		return retries, lastErr
	}
	start := time.Now()
	if retries, lastErr := connectAll(start.Add(*stormMax)); retries > 0 && countReady() < n {
		fail("first connect: %d of %d ready (%d failures, last: %s)", countReady(), n, retries, lastErr)
	}
	connectSecs := time.Since(start).Seconds()
	time.Sleep(time.Second) // the server settles (welcome sent, nothing queued)
	mark := markCPU()
	t0 := time.Now()
	for i, c := range stormConns { // dropped at once
		c.Abort()
		stormConns[i] = nil
	}
	retries, lastErr := connectAll(t0.Add(*stormMax))
	secs := time.Since(t0).Seconds()
	gen, srv := cpuSince(mark)
	got := countReady()
	for _, c := range stormConns {
		if c != nil {
			c.Abort()
		}
	}
	r := Result{"workload": "storm", "route": *stormRoute, "conns": n, "ready": got, "unit": "s",
		"retries": retries, "first_connect_s": connectSecs, "gen_cpu": gen, "srv_cpu": srv}
	if got == n {
		r["value"] = secs
	} else {
		r["error"] = fmt.Sprintf("%d of %d reconnected within %v", got, n, *stormMax)
	}
	if lastErr != "" {
		r["last_error"] = lastErr
	}
	emit(r)
}

var stormConns []*Conn

func countReady() int {
	k := 0
	for _, c := range stormConns {
		if c != nil {
			k++
		}
	}
	return k
}

// raiseNofile lifts the descriptor limit to its hard maximum (the storm holds 10,000+).
func raiseNofile() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

func main() {
	flag.Parse()
	raiseNofile()
	if *proto == "wsapp" && len(*secret) < 32 {
		fail("-secret: wsapp needs its 32+ byte HS256 secret")
	}
	switch *workload {
	case "echo":
		runEcho()
	case "latency":
		runLatency()
	case "handshake":
		runHandshake()
	case "idle":
		runIdle()
	case "fanout":
		runFanout()
	case "storm":
		runStorm()
	default:
		fail("unknown -workload %q", *workload)
	}
}
