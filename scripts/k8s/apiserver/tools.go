//go:build tools

// Package tools pins k8s.io/kubernetes/cmd/kube-apiserver in this module's
// dependency graph so `go mod tidy` keeps everything it needs. The binary is
// built with `go build k8s.io/kubernetes/cmd/kube-apiserver` from this module
// (see scripts/build-k8s.sh); this file itself is never compiled.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
