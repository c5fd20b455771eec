#!/usr/bin/env bash
# Validates every deployment file offline (no Docker engine, no cluster):
#
#   docker-compose.yml           check-jsonschema, compose-spec schema
#   deploy/k8s/overlays/*, load  kubectl kustomize, then kubernetes-validate --strict
#                                on the built-in kinds and check-jsonschema on the
#                                KEDA kinds against deploy/k8s/schemas/
#   .github/workflows/ci.yml     check-jsonschema, GitHub workflow schema
#   deploy/Dockerfile            parsed; its binaries are the workspace's binaries,
#                                and every command compose and Kubernetes run is one
#   config files                 TOML / YAML / env syntax, alert rules sane, every
#                                key given to a service is one it knows
#   scripts                      bash -n
#
# Installs what it needs when missing (pip install --user check-jsonschema
# kubernetes-validate dockerfile); after that it needs no network.
# Runs every check, prints one line per check, exits non-zero if any failed.
#
#   scripts/check-deploy.sh            all checks
#   K8S_VERSIONS="1.30.0" scripts/check-deploy.sh   other Kubernetes versions
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The oldest Kubernetes we support (gRPC probes, policy/v1, autoscaling/v2 are
# all GA there) and the newest kubernetes-validate knows.
K8S_VERSIONS="${K8S_VERSIONS:-1.29.0 1.37.0}"
SCHEMAS="deploy/k8s/schemas"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
failures=()

# check NAME COMMAND...: runs the command, output shown only on failure.
check() {
    local name="$1"
    shift
    if "$@" >"$WORK/out" 2>&1; then
        passed=$((passed + 1))
        echo "ok   $name"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "FAIL $name"
        sed 's/^/     /' "$WORK/out"
    fi
}

# --------------------------------------------------------------- tools
export PATH="$HOME/.local/bin:$PATH"

ensure_python_tools() {
    python3 -c 'import tomllib' 2>/dev/null || {
        echo "check-deploy needs Python 3.11 or later (tomllib)" >&2
        exit 2
    }
    local missing=()
    command -v check-jsonschema >/dev/null || missing+=(check-jsonschema)
    command -v kubernetes-validate >/dev/null || missing+=(kubernetes-validate)
    python3 -c 'import dockerfile' 2>/dev/null || missing+=(dockerfile)
    python3 -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
    if ((${#missing[@]})); then
        echo "installing ${missing[*]} (pip --user)"
        python3 -m pip install --quiet --user "${missing[@]}"
    fi
}
ensure_python_tools

KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
if [[ -z "$KUBECTL" && -x /usr/bin/kubectl ]]; then
    KUBECTL=/usr/bin/kubectl
fi
if [[ -z "$KUBECTL" ]]; then
    echo "kubectl (with kustomize) is required: https://kubernetes.io/docs/tasks/tools/" >&2
    exit 2
fi

# --------------------------------------------------------------- compose
check "docker-compose.yml: compose-spec schema" \
    check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

# Semantics the schema cannot see: every service env file exists, every
# depends_on target exists and is healthy-checked when required, bind mounts
# exist, the scalable services publish no fixed host port.
compose_semantics() {
    python3 - <<'EOF'
import os, sys, yaml
compose = yaml.safe_load(open("docker-compose.yml"))
services = compose["services"]
errors = []
for name, svc in services.items():
    for env in svc.get("env_file", []):
        path = env["path"] if isinstance(env, dict) else env
        required = env.get("required", True) if isinstance(env, dict) else True
        if required and not os.path.exists(path):
            errors.append(f"{name}: env_file {path} does not exist")
    for dep, cond in (svc.get("depends_on") or {}).items():
        if dep not in services:
            errors.append(f"{name}: depends_on unknown service {dep}")
        elif cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
            errors.append(f"{name}: waits for {dep} to be healthy but {dep} has no healthcheck")
    for volume in svc.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith(".") and not os.path.exists(source):
            errors.append(f"{name}: bind mount {source} does not exist")
for scalable in ("alert-subscriber", "task-worker"):
    if services.get(scalable, {}).get("ports"):
        errors.append(f"{scalable}: fixed host ports stop `--scale {scalable}=N`")
    if "container_name" in services.get(scalable, {}):
        errors.append(f"{scalable}: container_name stops `--scale`")
for error in errors:
    print(error)
sys.exit(1 if errors else 0)
EOF
}
check "docker-compose.yml: env files, depends_on, mounts, scalability" compose_semantics

check ".env.example: KEY=VALUE lines" \
    python3 -c '
import re, sys
bad = [f"line {n}: {l.rstrip()}" for n, l in enumerate(open(".env.example"), 1)
       if l.strip() and not l.startswith("#") and not re.match(r"^[A-Z_][A-Z0-9_]*=\S*$", l.rstrip("\n"))]
print("\n".join(bad)); sys.exit(1 if bad else 0)'

# --------------------------------------------------------------- kubernetes
# Splits a rendered overlay: built-in kinds into one stream for
# kubernetes-validate, each KEDA object into its own JSON file for
# check-jsonschema. A custom kind without a kept schema is an error.
split_rendered() {
    local rendered="$1" out="$2"
    python3 - "$rendered" "$out" "$SCHEMAS" <<'EOF'
import json, os, sys, yaml
rendered, out, schemas = sys.argv[1:4]
os.makedirs(out, exist_ok=True)
core = []
unknown = []
count = 0
for doc in yaml.safe_load_all(open(rendered)):
    if not doc:
        continue
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    if group.endswith(".k8s.io") or "." not in group:
        core.append(doc)
        continue
    version = doc["apiVersion"].split("/")[1]
    schema = os.path.join(schemas, f"{doc['kind'].lower()}-{group.split('.')[0]}-{version}.json")
    if not os.path.exists(schema):
        unknown.append(f"{doc['apiVersion']} {doc['kind']} {doc['metadata']['name']}: no schema {schema}")
        continue
    count += 1
    with open(os.path.join(out, f"{count:03d}-{doc['kind']}-{doc['metadata']['name']}.json"), "w") as f:
        json.dump({"schema": schema, "doc": doc}, f)
with open(os.path.join(out, "core.yaml"), "w") as f:
    yaml.safe_dump_all(core, f)
print("\n".join(unknown))
sys.exit(1 if unknown else 0)
EOF
}

# kubernetes-validate only warns (exit 0) on a kind it has no schema for, so
# the split above decides what is built-in; here any warning is a failure too.
validate_core() {
    local file="$1" version="$2"
    kubernetes-validate --strict --quiet -k "$version" "$file" | tee "$WORK/kv"
    ! grep -q . "$WORK/kv"
}

validate_custom() {
    local dir="$1" ok=0 item schema
    for item in "$dir"/[0-9]*.json; do
        [[ -e "$item" ]] || continue
        schema="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["schema"])' "$item")"
        python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["doc"], open(sys.argv[2], "w"))' \
            "$item" "$item.doc.json"
        echo "$(basename "$item"):"
        check-jsonschema --schemafile "$schema" "$item.doc.json" || ok=1
    done
    return "$ok"
}

# What schemas cannot see: the objects of one overlay refer to each other.
# Services, PDBs and Deployments select the pods they mean; probes name ports
# the container has; every ConfigMap, Secret and ServiceAccount a pod uses is
# rendered (or, for the load Job, rendered by the base); HPA and KEDA targets
# and KEDA authentication references exist; a ConfigMap mounted for hot
# reload is not mounted with subPath (subPath mounts never update).
k8s_references() {
    python3 - "$1" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
# The load Job is applied beside an overlay: the base's plain-named objects count.
external = {} if "Namespace" in by_kind else {"Secret": {"switchyard-credentials"}, "ServiceAccount": {"switchyard"}}
def exists(kind, name):
    return name in by_kind.get(kind, {}) or name in external.get(kind, set())
def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())
def container_ports(template):
    ports = set()
    for c in template["spec"]["containers"]:
        for p in c.get("ports", []):
            ports |= {p.get("name"), p["containerPort"]}
    return ports
errors = []
pods = []
for kind in ("Deployment", "StatefulSet", "Job"):
    for name, d in by_kind.get(kind, {}).items():
        claims = {c["metadata"]["name"] for c in d["spec"].get("volumeClaimTemplates", [])}
        pods.append((f"{kind}/{name}", d["spec"]["template"], d["spec"].get("selector", {}).get("matchLabels"), claims))
for where, template, selector, claims in pods:
    labels = template["metadata"].get("labels", {})
    spec = template["spec"]
    if selector and not matches(selector, labels):
        errors.append(f"{where}: selector {selector} does not match its pod labels")
    account = spec.get("serviceAccountName")
    if account and not exists("ServiceAccount", account):
        errors.append(f"{where}: service account {account} is not defined")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v and not exists("ConfigMap", v["configMap"]["name"]):
            errors.append(f"{where}: volume {v['name']}: ConfigMap {v['configMap']['name']} is not defined")
        if "secret" in v and not exists("Secret", v["secret"]["secretName"]):
            errors.append(f"{where}: volume {v['name']}: Secret {v['secret']['secretName']} is not defined")
    for c in spec["containers"] + spec.get("initContainers", []):
        ports = set()
        for p in c.get("ports", []):
            ports |= {p.get("name"), p["containerPort"]}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            for handler in ("httpGet", "tcpSocket", "grpc"):
                port = c.get(probe, {}).get(handler, {}).get("port")
                if port is not None and port not in ports:
                    errors.append(f"{where}: {c['name']} {probe} uses port {port}, which the container does not declare")
        for source in c.get("envFrom", []):
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in source and not exists(kind, source[key]["name"]):
                    errors.append(f"{where}: {c['name']} envFrom {kind} {source[key]['name']} is not defined")
        for mount in c.get("volumeMounts", []):
            if mount["name"] in claims:
                continue
            if mount["name"] not in volumes:
                errors.append(f"{where}: {c['name']} mounts unknown volume {mount['name']}")
            elif "configMap" in volumes[mount["name"]] and "subPath" in mount:
                errors.append(f"{where}: {c['name']} mounts ConfigMap volume {mount['name']} with subPath: it would never update")
for name, svc in by_kind.get("Service", {}).items():
    selector = svc["spec"].get("selector", {})
    targets = [(w, t) for w, t, _, _ in pods if matches(selector, t["metadata"].get("labels", {}))]
    if not targets:
        errors.append(f"Service/{name}: selector {selector} matches no pod")
    for port in svc["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        for w, t in targets:
            if target not in container_ports(t):
                errors.append(f"Service/{name}: targetPort {target} is not a port of {w}")
for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
    selector = pdb["spec"]["selector"]["matchLabels"]
    if not any(matches(selector, t["metadata"].get("labels", {})) for _, t, _, _ in pods):
        errors.append(f"PodDisruptionBudget/{name}: selector {selector} matches no pod")
for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
    ref = hpa["spec"]["scaleTargetRef"]
    if not exists(ref["kind"], ref["name"]):
        errors.append(f"HorizontalPodAutoscaler/{name}: target {ref['kind']}/{ref['name']} is not defined")
for name, so in by_kind.get("ScaledObject", {}).items():
    ref = so["spec"]["scaleTargetRef"]
    if not exists(ref.get("kind", "Deployment"), ref["name"]):
        errors.append(f"ScaledObject/{name}: target {ref['name']} is not defined")
    for trigger in so["spec"]["triggers"]:
        auth = trigger.get("authenticationRef")
        if auth and not exists(auth.get("kind", "TriggerAuthentication"), auth["name"]):
            errors.append(f"ScaledObject/{name}: authentication {auth['name']} is not defined")
for name, ta in by_kind.get("TriggerAuthentication", {}).items():
    for ref in ta["spec"].get("secretTargetRef", []):
        secret = by_kind.get("Secret", {}).get(ref["name"])
        if secret is None:
            errors.append(f"TriggerAuthentication/{name}: Secret {ref['name']} is not defined")
        elif ref["key"] not in {**secret.get("data", {}), **secret.get("stringData", {})}:
            errors.append(f"TriggerAuthentication/{name}: Secret {ref['name']} has no key {ref['key']}")
print("\n".join(errors))
sys.exit(1 if errors else 0)
EOF
}

check "deploy/k8s/schemas: KEDA schemas are valid JSON Schema" \
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
    check "k8s $name: references between objects resolve" \
        k8s_references "$rendered"
    for version in $K8S_VERSIONS; do
        check "k8s $name: kubernetes-validate --strict (Kubernetes $version)" \
            validate_core "$WORK/$name/core.yaml" "$version"
    done
    check "k8s $name: KEDA objects against $SCHEMAS" \
        validate_custom "$WORK/$name"
done

# Files applied outside kustomize (Helm values, operator resources): YAML that
# parses, with apiVersion/kind where it is a resource.
prod_extras() {
    python3 - <<'EOF'
import glob, sys, yaml
errors = []
for path in sorted(glob.glob("deploy/k8s/overlays/prod/*/*.yaml")):
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
    except yaml.YAMLError as e:
        errors.append(f"{path}: {e}")
        continue
    if not docs:
        errors.append(f"{path}: empty")
    for doc in docs:
        if "kind" in doc and not {"apiVersion", "metadata", "spec"} <= doc.keys():
            errors.append(f"{path}: {doc['kind']} lacks apiVersion, metadata or spec")
print("\n".join(errors))
sys.exit(1 if errors else 0)
EOF
}
check "k8s prod: Helm values and operator resources parse" prod_extras

# --------------------------------------------------------------- CI
check ".github/workflows/ci.yml: GitHub workflow schema" \
    check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml

# --------------------------------------------------------------- image
# The binaries the Dockerfile copies must be exactly the workspace's binaries
# (a renamed or new binary breaks the image build or misses the image), and
# every command compose and Kubernetes run must be in the image.
image_contents() {
    python3 - "$KUBECTL" <<'EOF'
import glob, os, re, subprocess, sys, tomllib, yaml
import dockerfile

kubectl = sys.argv[1]
errors = []
commands = dockerfile.parse_file("deploy/Dockerfile")
copied = set()
for command in commands:
    if command.cmd == "RUN" and "cargo build" in command.value[0]:
        match = re.search(r"for bin in (.*?); do", command.value[0], re.S)
        if not match:
            errors.append("Dockerfile: no `for bin in ...; do` loop after cargo build")
        else:
            copied = set(match.group(1).split())
    if command.cmd == "COPY" and not any(f.startswith("--from=") for f in command.flags):
        for source in command.value[:-1]:
            if not glob.glob(source):
                errors.append(f"Dockerfile: COPY source {source} does not exist")

# The workspace's binaries, by Cargo's rules (src/main.rs, src/bin/*, [[bin]]),
# read from the manifests: no cargo run, so a half-edited crate elsewhere in
# the tree does not hide this check's answer.
workspace = set()
for manifest in glob.glob("crates/*/Cargo.toml"):
    crate = os.path.dirname(manifest)
    package = tomllib.load(open(manifest, "rb"))
    auto = package.get("package", {}).get("autobins", True)
    if auto and os.path.exists(f"{crate}/src/main.rs"):
        workspace.add(package["package"]["name"])
    if auto:
        workspace |= {os.path.basename(f)[:-3] for f in glob.glob(f"{crate}/src/bin/*.rs")}
        workspace |= {os.path.basename(os.path.dirname(f)) for f in glob.glob(f"{crate}/src/bin/*/main.rs")}
    workspace |= {b["name"] for b in package.get("bin", [])}
if copied != workspace:
    errors.append(f"Dockerfile copies {sorted(copied)}, the workspace builds {sorted(workspace)}")

scripts = {"healthcheck", "seed-users"}
in_image = copied | scripts
used = {}
for name, svc in yaml.safe_load(open("docker-compose.yml"))["services"].items():
    if svc.get("image", "").startswith("switchyard") and svc.get("command"):
        used[f"compose {name}"] = svc["command"][0]
    test = (svc.get("healthcheck") or {}).get("test", [])
    if svc.get("image", "").startswith("switchyard") and test[:1] == ["CMD"]:
        used[f"compose {name} healthcheck"] = test[1]
for overlay in glob.glob("deploy/k8s/overlays/*/") + ["deploy/k8s/load/"]:
    rendered = subprocess.run([kubectl, "kustomize", overlay], check=True, capture_output=True, text=True).stdout
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if "switchyard" in container["image"] and container.get("command"):
                used[f"k8s {overlay} {doc['metadata']['name']}"] = container["command"][0]
for where, binary in sorted(used.items()):
    if binary not in in_image:
        errors.append(f"{where} runs {binary}, which is not in the image")
print("\n".join(errors))
sys.exit(1 if errors else 0)
EOF
}
check "deploy/Dockerfile: binaries match the workspace and every command" image_contents

# --------------------------------------------------------------- config files
config_files() {
    python3 - <<'EOF'
import glob, sys, tomllib, yaml
errors = []
rules_files = glob.glob("deploy/config/**/*.toml", recursive=True) + glob.glob("deploy/k8s/base/config/*.toml")
for path in rules_files:
    try:
        config = tomllib.load(open(path, "rb"))
    except tomllib.TOMLDecodeError as e:
        errors.append(f"{path}: {e}")
        continue
    for kind, rule in config.get("rules", {}).items():
        where = f"{path}: rules.{kind}"
        missing = {"warning", "critical", "direction", "hysteresis"} - rule.keys()
        if missing:
            errors.append(f"{where}: missing {sorted(missing)}")
            continue
        if rule["direction"] not in ("above", "below"):
            errors.append(f"{where}: direction must be above or below")
        elif (rule["direction"] == "above") != (rule["critical"] > rule["warning"]):
            errors.append(f"{where}: critical must lie beyond warning in the rule's direction")
        if rule["hysteresis"] < 0:
            errors.append(f"{where}: hysteresis must not be negative")
try:
    prometheus = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    services = {"sensor-publisher", "alert-subscriber", "monitor-subscriber", "user-service", "task-producer", "task-worker"}
    if services - jobs:
        errors.append(f"prometheus.yml: no scrape job for {sorted(services - jobs)}")
except (yaml.YAMLError, KeyError, TypeError) as e:
    errors.append(f"deploy/prometheus/prometheus.yml: {e}")
print("\n".join(errors))
sys.exit(1 if errors else 0)
EOF
}
check "deploy/config and prometheus.yml: syntax, alert rules, scrape jobs" config_files

# The settings the deploy files give the services must be keys the services
# know: their Config structs deny unknown fields, so a renamed key would stop
# a container at start. Checked by name against each crate's source: every
# SWITCHYARD__KEY variable (compose, Kubernetes) and every top-level key of
# the alert-subscriber config files must be a `pub key:` field (or a serde
# rename) of that crate.
config_keys() {
    python3 - "$KUBECTL" <<'EOF'
import glob, re, subprocess, sys, tomllib, yaml
kubectl = sys.argv[1]
used = []  # (service, key, where)
compose = yaml.safe_load(open("docker-compose.yml"))
for name, svc in compose["services"].items():
    env = svc.get("environment") or {}
    items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
    for var, _ in items:
        if var.startswith("SWITCHYARD__") and svc.get("command"):
            used.append((svc["command"][0], var[len("SWITCHYARD__"):].split("__")[0].lower(), f"compose {name}"))
for overlay in glob.glob("deploy/k8s/overlays/*/") + ["deploy/k8s/load/"]:
    rendered = subprocess.run([kubectl, "kustomize", overlay], check=True, capture_output=True, text=True).stdout
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc["kind"] not in ("Deployment", "Job"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"].startswith("SWITCHYARD__") and c.get("command"):
                    used.append((c["command"][0], e["name"][len("SWITCHYARD__"):].split("__")[0].lower(), f"{overlay} {doc['metadata']['name']}"))
for path in glob.glob("deploy/config/alert-rules/*.toml") + glob.glob("deploy/k8s/base/config/*.toml"):
    for key in tomllib.load(open(path, "rb")):
        used.append(("alert-subscriber", key, path))
errors = []
for service, key, where in used:
    sources = " ".join(open(f).read() for f in glob.glob(f"crates/{service}/src/**/*.rs", recursive=True))
    if not re.search(rf"pub {re.escape(key)}:|rename = \"{re.escape(key)}\"", sources):
        errors.append(f"{where}: {service} has no config key {key}")
print("\n".join(errors))
sys.exit(1 if errors else 0)
EOF
}
check "deploy settings name keys the services know" config_keys

# --------------------------------------------------------------- scripts
for script in scripts/*.sh deploy/docker/healthcheck deploy/docker/seed-users; do
    [[ -e "$script" ]] || continue
    check "bash -n $script" bash -n "$script"
done

echo
echo "check-deploy: $passed passed, $failed failed"
if ((failed)); then
    printf '  failed: %s\n' "${failures[@]}"
    exit 1
fi
