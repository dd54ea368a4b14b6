// Command lcbench measures Go's context package: the baseline that
// `make bench` prints beside lcontext and the plain-Lua implementation.
//
// It uses its own timing loops (not `go test -bench`) so that every figure
// is measured the same way as in bench/bench.lua: a fixed number of
// iterations per run, wall-clock time on the monotonic clock, a full GC
// before each run, and the median of 5 runs.
//
// Output: one line per figure, `name<TAB>value<TAB>unit`.
// Progress and notes go to stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"time"
)

const runs = 5

// Sinks: stores into package-level variables defeat dead-code elimination.
var (
	sinkInt int
	sinkCtx context.Context
	sinkAny any
)

var scale = flag.Float64("scale", 1, "multiply timing-loop iteration counts (e.g. 0.1 for a quick run); tree and heap sizes stay fixed")

func iters(n int) int {
	m := int(float64(n) * *scale)
	if m < 1 {
		m = 1
	}
	return m
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func emit(name string, value float64, unit string) {
	fmt.Printf("%s\t%.6g\t%s\n", name, value, unit)
}

// nsPerOp runs body(n) `runs` times after one warm-up run and returns the
// median time per iteration in nanoseconds.
func nsPerOp(n int, body func(n int)) float64 {
	body(n / 10) // warm-up: page in, grow the timer heap, etc.
	res := make([]float64, 0, runs)
	for r := 0; r < runs; r++ {
		runtime.GC()
		t0 := time.Now()
		body(n)
		res = append(res, float64(time.Since(t0).Nanoseconds())/float64(n))
	}
	return median(res)
}

func benchWithCancelCancel(n int) {
	bg := context.Background()
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithCancel(bg)
		cancel()
		sinkCtx = ctx
	}
}

func benchWithTimeoutCancel(n int) {
	bg := context.Background()
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(bg, time.Hour)
		cancel()
		sinkCtx = ctx
	}
}

func benchErrLive(n int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := 0
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			c++
		}
	}
	sinkInt += c
}

type benchKey int

func benchValueDepth10(n int) {
	// k0 is set first, so it is the deepest: Value(k0) walks all 10 levels.
	var ctx context.Context = context.Background()
	for d := 0; d < 10; d++ {
		ctx = context.WithValue(ctx, benchKey(d), d)
	}
	k := benchKey(0)
	var v any
	for i := 0; i < n; i++ {
		v = ctx.Value(k)
	}
	sinkAny = v
}

// cancel100kChildren returns the median time, in ms, of cancelling a
// WithCancel root that has nChildren WithCancel children. Building the tree
// is not timed.
func cancel100kChildren(nChildren int) float64 {
	res := make([]float64, 0, runs)
	ctxs := make([]context.Context, nChildren)
	cancels := make([]context.CancelFunc, nChildren)
	for r := 0; r < runs+1; r++ {
		root, cancelRoot := context.WithCancel(context.Background())
		for i := range ctxs {
			ctxs[i], cancels[i] = context.WithCancel(root)
		}
		runtime.GC()
		t0 := time.Now()
		cancelRoot()
		el := time.Since(t0)
		if ctxs[nChildren-1].Err() == nil {
			fmt.Fprintln(os.Stderr, "lcbench: child not cancelled")
			os.Exit(1)
		}
		if r > 0 { // the first run is a warm-up
			res = append(res, float64(el.Nanoseconds())/1e6)
		}
		for i := range ctxs {
			ctxs[i], cancels[i] = nil, nil
		}
	}
	return median(res)
}

func heapAlloc() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// bytesPerCtx returns the median heap growth per WithCancel(Background)
// context kept alive; with keepCancel its cancel func is kept alive too.
func bytesPerCtx(n int, keepCancel bool) float64 {
	res := make([]float64, 0, runs)
	ctxs := make([]context.Context, n)
	cancels := make([]context.CancelFunc, n)
	bg := context.Background()
	for r := 0; r < runs; r++ {
		before := heapAlloc()
		for i := 0; i < n; i++ {
			ctxs[i], cancels[i] = context.WithCancel(bg)
		}
		if !keepCancel {
			for i := range cancels {
				cancels[i] = nil
			}
		}
		after := heapAlloc()
		runtime.KeepAlive(ctxs)
		runtime.KeepAlive(cancels)
		res = append(res, (float64(after)-float64(before))/float64(n))
		for i := range ctxs {
			ctxs[i], cancels[i] = nil, nil
		}
	}
	return median(res)
}

// benchChanHandoff: one goroutine sends n values, another receives them,
// over a channel of capacity capacity (0: unbuffered, each send meets its
// receive). ns per value handed over.
func benchChanHandoff(capacity int) func(n int) {
	return func(n int) {
		ch := make(chan int, capacity)
		done := make(chan struct{})
		go func() {
			s := 0
			for i := 0; i < n; i++ {
				s += <-ch
			}
			sinkInt += s
			close(done)
		}()
		for i := 0; i < n; i++ {
			ch <- i
		}
		<-done
	}
}

// benchSemUncontended: acquire and release a buffered channel used as a
// semaphore (the standard library has no weighted semaphore; x/sync cannot
// be downloaded here), never contended.
func benchSemUncontended(n int) {
	sem := make(chan struct{}, 1)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		<-sem
	}
}

func main() {
	flag.Parse()
	fmt.Fprintf(os.Stderr, "lcbench: %s %s/%s GOMAXPROCS=%d\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0))

	emit("with_cancel_cancel", nsPerOp(iters(1_000_000), benchWithCancelCancel), "ns/op")
	emit("with_timeout_cancel", nsPerOp(iters(1_000_000), benchWithTimeoutCancel), "ns/op")

	// 1,000,000 other deadlines pending (children of Background, kept alive,
	// not cancelled while measuring).
	{
		nPending := 1_000_000
		pending := make([]context.Context, nPending)
		pendingCancel := make([]context.CancelFunc, nPending)
		for i := range pending {
			pending[i], pendingCancel[i] = context.WithTimeout(context.Background(), time.Hour)
		}
		emit("with_timeout_cancel_1m", nsPerOp(iters(1_000_000), benchWithTimeoutCancel), "ns/op")
		for i := range pending {
			pendingCancel[i]()
		}
		runtime.KeepAlive(pending)
	}

	emit("err_live", nsPerOp(iters(10_000_000), benchErrLive), "ns/op")
	emit("value_depth10", nsPerOp(iters(10_000_000), benchValueDepth10), "ns/op")
	emit("cancel_100k_children", cancel100kChildren(100_000), "ms")
	emit("bytes_per_ctx", bytesPerCtx(100_000, true), "bytes")
	emit("bytes_per_ctx_only", bytesPerCtx(100_000, false), "bytes")
	emit("chan_handoff_unbuffered", nsPerOp(iters(1_000_000), benchChanHandoff(0)), "ns/op")
	emit("chan_handoff_buffered", nsPerOp(iters(1_000_000), benchChanHandoff(128)), "ns/op")
	emit("sem_acquire_release", nsPerOp(iters(10_000_000), benchSemUncontended), "ns/op")

	if sinkInt == -1 {
		fmt.Fprintln(os.Stderr, sinkCtx, sinkAny)
	}
}
