#!/usr/bin/env sh
# Regenerate the committed gRPC stubs from helixfed.proto with grpcio-tools (dev dependency).
# Run from anywhere; the stubs import each other as server.service.*, so protoc runs at the repo root.
set -eu
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc --proto_path=. --python_out=. --pyi_out=. --grpc_python_out=. \
    server/service/helixfed.proto
