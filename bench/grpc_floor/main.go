// Command grpc_floor times CRI calls from a Go client (the CRI's own Go
// types and grpc-go, as the kubelet and critest use them) against the unix
// socket given as its argument: 200 calls to warm up, then 2000 timed ones,
// p50 and p95 printed for each call. bench/grpc_floor.py builds and runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	conn, err := grpc.NewClient("unix://"+os.Args[1], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	c := runtimeapi.NewImageServiceClient(conn)
	r := runtimeapi.NewRuntimeServiceClient(conn)
	calls := map[string]func() error{
		"ListImages": func() error { _, e := c.ListImages(context.Background(), &runtimeapi.ListImagesRequest{}); return e },
		"Version":    func() error { _, e := r.Version(context.Background(), &runtimeapi.VersionRequest{}); return e },
	}
	names := []string{"ListImages", "Version"}
	if len(os.Args) > 2 {
		names = os.Args[2:]
	}
	for _, name := range names {
		f := calls[name]
		for i := 0; i < 200; i++ {
			f()
		}
		var xs []float64
		for i := 0; i < 2000; i++ {
			t := time.Now()
			if err := f(); err != nil {
				panic(err)
			}
			xs = append(xs, float64(time.Since(t).Microseconds())/1000)
		}
		sort.Float64s(xs)
		fmt.Printf("%s p50 %.3f ms p95 %.3f ms\n", name, xs[1000], xs[1900])
	}
}
