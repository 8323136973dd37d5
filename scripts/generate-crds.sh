#!/usr/bin/env bash
# Regenerates the CRD YAML in crds/, in the Helm chart and in deploy/crd (kustomize) from the
# Rust types (src/api.rs).
# tests/crd.rs fails when the committed files differ from `eac-controller crd`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --bin eac-controller -- crd > crds/environmentaccountconnections.yaml
mkdir -p charts/eac-controller/crds
cp crds/environmentaccountconnections.yaml charts/eac-controller/crds/environmentaccountconnections.yaml
cp crds/environmentaccountconnections.yaml deploy/crd/environmentaccountconnections.yaml
echo "wrote crds/, charts/eac-controller/crds/ and deploy/crd/environmentaccountconnections.yaml"
