// Command podresources-server serves the kubelet's PodResources v1 gRPC API on a unix socket,
// from a JSON file, for kvsched's node agent tests. It is built from the kubelet's own code:
// the generated messages, service descriptor and PodResourcesListerServer interface of
// k8s.io/kubelet/pkg/apis/podresources/v1 (the version hack/podresources/build.sh pins),
// registered with google.golang.org/grpc, so the agent talks to exactly what the kubelet
// serves on /var/lib/kubelet/pod-resources/kubelet.sock.
//
//	podresources-server --socket /tmp/x/kubelet.sock --state /tmp/x/state.json
//
// The state file is read again on every call, so a test changes the allocations by rewriting
// it (atomically: write a temporary file, then rename). Its shape:
//
//	{"pods": [{"namespace": "llm", "name": "engine-0",
//	           "containers": [{"name": "vllm",
//	                           "devices": [{"resourceName": "nvidia.com/gpu",
//	                                        "deviceIds": ["GPU-..."]}]}]}],
//	 "allocatable": [{"resourceName": "nvidia.com/gpu", "deviceIds": ["GPU-...", "..."]}],
//	 "delayMs": 0,
//	 "unimplemented": ["GetAllocatableResources"]}
//
// "delayMs" (optional) holds every reply back that long: a kubelet that does not answer in
// time. "unimplemented" (optional) names methods that answer codes.Unimplemented, as the
// embedded UnimplementedPodResourcesListerServer does (an older kubelet). A missing or
// malformed state file is codes.Unavailable with the reason. The server logs to stderr,
// says "listening on <socket>" once it accepts connections, and on SIGTERM/SIGINT stops
// gracefully and removes the socket.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

type deviceSpec struct {
	ResourceName string   `json:"resourceName"`
	DeviceIDs    []string `json:"deviceIds"`
}

type containerSpec struct {
	Name    string       `json:"name"`
	Devices []deviceSpec `json:"devices"`
}

type podSpec struct {
	Namespace  string          `json:"namespace"`
	Name       string          `json:"name"`
	Containers []containerSpec `json:"containers"`
}

type stateFile struct {
	Pods          []podSpec    `json:"pods"`
	Allocatable   []deviceSpec `json:"allocatable"`
	DelayMs       int          `json:"delayMs"`
	Unimplemented []string     `json:"unimplemented"`
}

// server implements podresourcesv1.PodResourcesListerServer from the state file.
type server struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	statePath string
}

var _ podresourcesv1.PodResourcesListerServer = (*server)(nil)

func (s *server) load(ctx context.Context, method string) (*stateFile, error) {
	data, err := os.ReadFile(s.statePath)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "state file: %v", err)
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.DisallowUnknownFields()
	var state stateFile
	if err := decoder.Decode(&state); err != nil {
		return nil, status.Errorf(codes.Unavailable, "state file %s: %v", s.statePath, err)
	}
	if state.DelayMs > 0 {
		select {
		case <-time.After(time.Duration(state.DelayMs) * time.Millisecond):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if slices.Contains(state.Unimplemented, method) {
		return nil, status.Errorf(codes.Unimplemented, "method %s not implemented", method)
	}
	return &state, nil
}

func devices(specs []deviceSpec) []*podresourcesv1.ContainerDevices {
	out := make([]*podresourcesv1.ContainerDevices, 0, len(specs))
	for _, d := range specs {
		out = append(out, &podresourcesv1.ContainerDevices{
			ResourceName: d.ResourceName,
			DeviceIds:    slices.Clone(d.DeviceIDs),
		})
	}
	return out
}

func podResources(p podSpec) *podresourcesv1.PodResources {
	pod := &podresourcesv1.PodResources{Name: p.Name, Namespace: p.Namespace}
	for _, c := range p.Containers {
		pod.Containers = append(pod.Containers, &podresourcesv1.ContainerResources{
			Name:    c.Name,
			Devices: devices(c.Devices),
		})
	}
	return pod
}

func (s *server) List(
	ctx context.Context, _ *podresourcesv1.ListPodResourcesRequest,
) (*podresourcesv1.ListPodResourcesResponse, error) {
	state, err := s.load(ctx, "List")
	if err != nil {
		return nil, err
	}
	reply := &podresourcesv1.ListPodResourcesResponse{}
	for _, p := range state.Pods {
		reply.PodResources = append(reply.PodResources, podResources(p))
	}
	return reply, nil
}

func (s *server) GetAllocatableResources(
	ctx context.Context, _ *podresourcesv1.AllocatableResourcesRequest,
) (*podresourcesv1.AllocatableResourcesResponse, error) {
	state, err := s.load(ctx, "GetAllocatableResources")
	if err != nil {
		return nil, err
	}
	return &podresourcesv1.AllocatableResourcesResponse{Devices: devices(state.Allocatable)}, nil
}

func (s *server) Get(
	ctx context.Context, request *podresourcesv1.GetPodResourcesRequest,
) (*podresourcesv1.GetPodResourcesResponse, error) {
	state, err := s.load(ctx, "Get")
	if err != nil {
		return nil, err
	}
	for _, p := range state.Pods {
		if p.Name == request.GetPodName() && p.Namespace == request.GetPodNamespace() {
			return &podresourcesv1.GetPodResourcesResponse{PodResources: podResources(p)}, nil
		}
	}
	// The kubelet's wording (pkg/kubelet/apis/podresources/server_v1.go).
	return nil, fmt.Errorf("pod %s in namespace %s not found",
		request.GetPodName(), request.GetPodNamespace())
}

func main() {
	socket := flag.String("socket", "", "unix socket path to listen on (required)")
	statePath := flag.String("state", "", "JSON state file, read on every call (required)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("podresources-server: ")
	if *socket == "" || *statePath == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := os.Remove(*socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("removing stale socket %s: %v", *socket, err)
	}
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatalf("listen on %s: %v", *socket, err)
	}
	grpcServer := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(grpcServer, &server{statePath: *statePath})

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-signals
		log.Printf("%s: stopping", sig)
		stopped := make(chan struct{})
		go func() {
			grpcServer.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			grpcServer.Stop()
		}
	}()

	log.Printf("listening on %s (state %s)", *socket, *statePath)
	if err := grpcServer.Serve(listener); err != nil {
		log.Fatalf("serve: %v", err)
	}
	_ = os.Remove(*socket)
}
