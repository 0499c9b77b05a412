// Command node-cri is the test node's minimal CRI client (crictl is not on
// the Go module proxy). Built by tests/env/node/build.sh.
//
//	node-cri -socket PATH ps        pod sandboxes and containers, one a line
//	node-cri -socket PATH cleanup   stop and remove every container and pod
//	                                sandbox (containerd tears the pod network
//	                                down through CNI, as for kubelet)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	socket := flag.String("socket", "", "containerd's socket")
	timeout := flag.Duration("timeout", 60*time.Second, "overall deadline")
	flag.Parse()
	if *socket == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: node-cri -socket PATH ps|cleanup")
		os.Exit(2)
	}
	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	rt := runtime.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	switch flag.Arg(0) {
	case "ps":
		err = ps(ctx, rt)
	case "cleanup":
		err = cleanup(ctx, rt)
	default:
		err = fmt.Errorf("unknown command %q", flag.Arg(0))
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "node-cri:", err)
	os.Exit(1)
}

func ps(ctx context.Context, rt runtime.RuntimeServiceClient) error {
	pods, err := rt.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		fmt.Printf("sandbox %s %s/%s %s\n", p.Id[:13], p.Metadata.Namespace, p.Metadata.Name, p.State)
	}
	ctrs, err := rt.ListContainers(ctx, &runtime.ListContainersRequest{})
	if err != nil {
		return err
	}
	for _, c := range ctrs.Containers {
		fmt.Printf("container %s %s pod=%s %s\n", c.Id[:13], c.Metadata.Name, c.PodSandboxId[:13], c.State)
	}
	return nil
}

func cleanup(ctx context.Context, rt runtime.RuntimeServiceClient) error {
	var firstErr error
	note := func(err error) {
		if err != nil {
			fmt.Fprintln(os.Stderr, "node-cri:", err)
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	ctrs, err := rt.ListContainers(ctx, &runtime.ListContainersRequest{})
	if err != nil {
		return err
	}
	for _, c := range ctrs.Containers {
		if c.State == runtime.ContainerState_CONTAINER_RUNNING {
			_, err := rt.StopContainer(ctx, &runtime.StopContainerRequest{ContainerId: c.Id, Timeout: 5})
			note(err)
		}
		_, err := rt.RemoveContainer(ctx, &runtime.RemoveContainerRequest{ContainerId: c.Id})
		note(err)
	}
	pods, err := rt.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		_, err := rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: p.Id})
		note(err)
		_, err = rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: p.Id})
		note(err)
	}
	fmt.Printf("removed %d containers, %d pod sandboxes\n", len(ctrs.Containers), len(pods.Items))
	return firstErr
}
