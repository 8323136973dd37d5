#!/usr/bin/env bash
# Regenerates the CRD YAML in crds/, in the Helm chart and in deploy/crd (kustomize) from the
# Rust types (src/connection/api.rs, src/mapping/api.rs, src/policy/api.rs).
# tests/crd.rs and tests/acceptance_crd.rs fail when the committed files differ from
# `eac-controller crd <plural>`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p charts/eac-controller/crds deploy/crd
for plural in environmentaccountconnections accountmappings connectionacceptancepolicies; do
  cargo run --quiet --bin eac-controller -- crd "$plural" > "crds/$plural.yaml"
  cp "crds/$plural.yaml" "charts/eac-controller/crds/$plural.yaml"
  cp "crds/$plural.yaml" "deploy/crd/$plural.yaml"
done
echo "wrote crds/, charts/eac-controller/crds/ and deploy/crd/ (environmentaccountconnections, accountmappings, connectionacceptancepolicies)"
