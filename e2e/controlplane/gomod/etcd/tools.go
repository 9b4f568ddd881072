//go:build tools

// Package tools pins the etcd server this module builds (package go.etcd.io/etcd/server/v3).
// `go install go.etcd.io/etcd/server/v3@v3.7.x` is refused because etcd's own go.mod carries
// replace directives; requiring it from this wrapper module works.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
