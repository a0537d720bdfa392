package rules

import (
	"runtime"
	"runtime/debug"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAzure measures what one Azure release costs the daemon: the
// signature, the SHA-256, the strict parse of the whole file (90,493
// entries), the guards, selection and aggregation. Figures: ms/op and, as
// a bound on peak heap, MiB allocated by one run with the collector off.
func BenchmarkAzure(b *testing.B) {
	for _, bc := range []struct {
		name string
		sel  Selection
	}{
		{"all", nil},
		{"AzureCloud", Selection{"name": {"AzureCloud"}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			k := newTestKey(b)
			data := readFeed(b, azureFixture)
			r := newRelease(363, k)
			r.m.Source = "azure"
			r.files = map[string][]byte{"ServiceTags_Public.json": data}
			r.m.Files = []ManifestFile{NewManifestFile("ServiceTags_Public.json", "azure", data)}
			bundle := r.build(b)
			fc := FeedConfig{Name: "azure", Format: "azure", Select: bc.sel, Keys: []string{k.pub.String()}, Threshold: 1}
			v := newTestVerifier(b, fc, Guards{})

			// One run without garbage collection: everything it allocates
			// bounds the heap it needs.
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			old := debug.SetGCPercent(-1)
			ver, err := v.Verify(bundle, nil, VerifyOptions{})
			runtime.ReadMemStats(&after)
			debug.SetGCPercent(old)
			if err != nil {
				b.Fatal(err)
			}
			allocMiB := float64(after.TotalAlloc-before.TotalAlloc) / (1 << 20)

			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			cpu0 := cpuTime()
			b.ResetTimer()
			for b.Loop() {
				if ver, err = v.Verify(bundle, nil, VerifyOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/op")
			// CPU time is the figure that holds on a busy machine; it
			// includes the collector's work on other threads.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1e3/float64(b.N), "cpu-ms/op")
			b.ReportMetric(allocMiB, "MiB-heap-bound")
			b.ReportMetric(float64(len(ver.Prefixes)), "prefixes")
		})
	}
}
