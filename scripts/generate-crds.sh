#!/usr/bin/env bash
# Regenerates the CRD YAML in crds/, in the Helm chart and in deploy/crd (kustomize) from the
# Rust types (src/api.rs, src/acceptance/api.rs).
# tests/crd.rs and tests/acceptance_crd.rs fail when the committed files differ from
# `eac-controller crd [KIND]`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p charts/eac-controller/crds
for kind in environmentaccountconnections connectionacceptancepolicies; do
  cargo run --quiet --bin eac-controller -- crd "$kind" > "crds/$kind.yaml"
  cp "crds/$kind.yaml" "charts/eac-controller/crds/$kind.yaml"
  cp "crds/$kind.yaml" "deploy/crd/$kind.yaml"
  echo "wrote crds/, charts/eac-controller/crds/ and deploy/crd/$kind.yaml"
done
