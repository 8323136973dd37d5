#!/usr/bin/env bash
# Regenerates the CRD YAML in crds/ and in the Helm chart from the Rust types (src/api.rs).
# tests/crd.rs fails when the committed files differ from `eac-controller crd`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --bin eac-controller -- crd > crds/environmentaccountconnections.yaml
mkdir -p charts/eac-controller/crds
cp crds/environmentaccountconnections.yaml charts/eac-controller/crds/environmentaccountconnections.yaml
echo "wrote crds/environmentaccountconnections.yaml and charts/eac-controller/crds/environmentaccountconnections.yaml"
