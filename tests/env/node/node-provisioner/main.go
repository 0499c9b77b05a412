// Command node-provisioner is the test node's tiny dynamic volume
// provisioner (built by tests/env/node/build.sh, started by node-up.sh).
//
// For every Pending claim of its StorageClass it makes a directory under
// -dir and a hostPath PersistentVolume pre-bound to the claim (the access
// modes the claim asks for, ReadWriteOnce or ReadWriteMany alike, since there
// is one node); the persistentvolume-binder controller then binds the pair.
// A claim asking for more than the free space of -dir stays Pending, with a
// ProvisioningFailed event saying why. When a claim is deleted its volume
// becomes Released: the directory and the volume are deleted.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const provisionedBy = "pv.kubernetes.io/provisioned-by"

var (
	kubeconfig = flag.String("kubeconfig", "", "kubeconfig")
	baseDir    = flag.String("dir", "", "directory holding the volumes")
	class      = flag.String("class", "", "StorageClass served")
	name       = flag.String("name", "", "provisioner name (the StorageClass's provisioner)")
	node       = flag.String("node", "", "node the volumes live on")
	interval   = flag.Duration("interval", time.Second, "poll interval")
)

func main() {
	flag.Parse()
	if *kubeconfig == "" || *baseDir == "" || *class == "" || *name == "" || *node == "" {
		log.Fatal("usage: node-provisioner -kubeconfig F -dir D -class C -name N -node NODE")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatal(err)
	}
	cfg.UserAgent = "imagebuild-node-provisioner"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.MkdirAll(*baseDir, 0o755); err != nil {
		log.Fatal(err)
	}
	log.Printf("serving StorageClass %s as %s, volumes under %s", *class, *name, *baseDir)
	reported := map[string]bool{}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := pass(ctx, client, reported); err != nil {
			log.Printf("pass: %v", err)
		}
		cancel()
		time.Sleep(*interval)
	}
}

func pass(ctx context.Context, c kubernetes.Interface, reported map[string]bool) error {
	pvs, err := c.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	claimed := map[string]bool{} // claim UIDs that already have a volume
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Annotations[provisionedBy] != *name {
			continue
		}
		if pv.Spec.ClaimRef != nil {
			claimed[string(pv.Spec.ClaimRef.UID)] = true
		}
		if (pv.Status.Phase == corev1.VolumeReleased || pv.Status.Phase == corev1.VolumeFailed) &&
			pv.DeletionTimestamp == nil && pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete {
			deleteVolume(ctx, c, pv)
		}
	}

	pvcs, err := c.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != *class ||
			pvc.Spec.VolumeName != "" || pvc.Status.Phase != corev1.ClaimPending ||
			pvc.DeletionTimestamp != nil || claimed[string(pvc.UID)] {
			continue
		}
		if err := provision(ctx, c, pvc); err != nil {
			key := string(pvc.UID) + err.Error()
			if !reported[key] {
				reported[key] = true
				log.Printf("claim %s/%s: %v", pvc.Namespace, pvc.Name, err)
				event(ctx, c, pvc, "ProvisioningFailed", corev1.EventTypeWarning, err.Error())
			}
		}
	}
	return nil
}

func provision(ctx context.Context, c kubernetes.Interface, pvc *corev1.PersistentVolumeClaim) error {
	size, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return fmt.Errorf("no storage request")
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(*baseDir, &st); err != nil {
		return err
	}
	free := int64(st.Bavail) * st.Bsize
	if size.Value() > free {
		return fmt.Errorf("not enough space: claim asks for %s, %s has %s free",
			size.String(), *baseDir, resource.NewQuantity(free, resource.BinarySI).String())
	}
	for _, m := range pvc.Spec.AccessModes {
		if m == corev1.ReadWriteOncePod {
			continue
		}
		if m != corev1.ReadWriteOnce && m != corev1.ReadWriteMany && m != corev1.ReadOnlyMany {
			return fmt.Errorf("access mode %s not supported", m)
		}
	}
	pvName := "pvc-" + string(pvc.UID)
	dir := filepath.Join(*baseDir, pvName)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	// Writable by any user: restricted Pods run as arbitrary non-root users,
	// and hostPath volumes ignore fsGroup.
	if err := os.Chmod(dir, 0o777); err != nil {
		return err
	}
	hostPathType := corev1.HostPathDirectory
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        pvName,
			Annotations: map[string]string{provisionedBy: *name},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              *class,
			VolumeMode:                    pvc.Spec.VolumeMode,
			ClaimRef: &corev1.ObjectReference{
				Kind:            "PersistentVolumeClaim",
				APIVersion:      "v1",
				Namespace:       pvc.Namespace,
				Name:            pvc.Name,
				UID:             pvc.UID,
				ResourceVersion: pvc.ResourceVersion,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType},
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{*node},
				}}}},
			}},
		},
	}
	_, err := c.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return err
	}
	log.Printf("claim %s/%s: provisioned %s (%s, %v)", pvc.Namespace, pvc.Name, pvName, size.String(), pvc.Spec.AccessModes)
	event(ctx, c, pvc, "ProvisioningSucceeded", corev1.EventTypeNormal, "Successfully provisioned volume "+pvName)
	return nil
}

func deleteVolume(ctx context.Context, c kubernetes.Interface, pv *corev1.PersistentVolume) {
	if pv.Spec.HostPath != nil {
		dir := filepath.Clean(pv.Spec.HostPath.Path)
		base := filepath.Clean(*baseDir) + string(filepath.Separator)
		if strings.HasPrefix(dir, base) && filepath.Base(dir) == pv.Name {
			if err := os.RemoveAll(dir); err != nil {
				log.Printf("volume %s: removing %s: %v", pv.Name, dir, err)
				return
			}
		}
	}
	err := c.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		log.Printf("volume %s: delete: %v", pv.Name, err)
		return
	}
	log.Printf("volume %s: released, deleted", pv.Name)
}

func event(ctx context.Context, c kubernetes.Interface, pvc *corev1.PersistentVolumeClaim, reason, typ, msg string) {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: pvc.Name + ".", Namespace: pvc.Namespace},
		InvolvedObject: corev1.ObjectReference{
			Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: pvc.Namespace,
			Name: pvc.Name, UID: pvc.UID, ResourceVersion: pvc.ResourceVersion,
		},
		Reason:         reason,
		Message:        msg,
		Type:           typ,
		Source:         corev1.EventSource{Component: *name},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	if _, err := c.CoreV1().Events(pvc.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		log.Printf("event for %s/%s: %v", pvc.Namespace, pvc.Name, err)
	}
}
