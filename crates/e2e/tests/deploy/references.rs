//! What schemas cannot see: the rendered objects refer to each other.
//! Services, PDBs and workloads select the pods they mean; probes and
//! Services name ports the containers declare; every ConfigMap, Secret and
//! ServiceAccount a pod uses is there (a Secret a cert-manager Certificate
//! issues counts, see issued.rs); HPA and KEDA targets and KEDA
//! authentication references (Secret and ConfigMap keys) exist; and no ConfigMap is mounted with
//! `subPath`, which the kubelet never updates (hot reload would silently stop).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::sources::{find, kind, name, object_data, pod_containers, pod_template, pod_volumes};

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
        .collect()
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// A port as a probe or Service names it: a number or a name.
fn port_ref(value: &Value) -> Option<String> {
    match value {
        Value::Number(number) => Some(number.to_string()),
        Value::String(text) => Some(text.clone()),
        _ => None,
    }
}

/// The names and numbers of the ports a container declares.
fn declared_ports(container: &Value) -> BTreeSet<String> {
    let mut ports = BTreeSet::new();
    for port in container["ports"].as_array().into_iter().flatten() {
        ports.extend(port["name"].as_str().map(str::to_string));
        ports.extend(port_ref(&port["containerPort"]));
    }
    ports
}

/// One pod template: where it is, its labels, the ports of its containers.
struct Pod<'a> {
    at: String,
    labels: BTreeMap<String, String>,
    template: &'a Value,
}

impl Pod<'_> {
    fn ports(&self) -> BTreeSet<String> {
        pod_containers(&self.template["spec"])
            .flat_map(declared_ports)
            .collect()
    }
}

/// Every reference among `objects` that does not resolve in `context` (the
/// objects applied together with them, `objects` included).
pub(crate) fn problems(objects: &[Value], context: &[Value]) -> Vec<String> {
    let exists = |kind: &str, name: &str| {
        find(context, kind, name).is_some() || (kind == "ServiceAccount" && name == "default")
    };
    let mut problems = Vec::new();
    let mut pods = Vec::new();
    for object in objects {
        let Some(template) = pod_template(object) else {
            continue;
        };
        pods.push(Pod {
            at: format!("{}/{}", kind(object), name(object)),
            labels: labels(&template["metadata"]["labels"]),
            template,
        });
    }
    // Pods of the whole context: a Service may select the pods of an object
    // applied beside it.
    let context_pods: Vec<BTreeMap<String, String>> = context
        .iter()
        .filter_map(pod_template)
        .map(|template| labels(&template["metadata"]["labels"]))
        .collect();

    for object in objects {
        let Some(template) = pod_template(object) else {
            continue;
        };
        let at = format!("{}/{}", kind(object), name(object));
        let spec = &template["spec"];
        let pod_labels = labels(&template["metadata"]["labels"]);
        if let Some(selector) = object.pointer("/spec/selector/matchLabels") {
            let selector = labels(selector);
            if !matches(&selector, &pod_labels) {
                problems.push(format!(
                    "{at}: selector {selector:?} does not match its pod labels {pod_labels:?}"
                ));
            }
        }
        if let Some(account) = spec["serviceAccountName"].as_str()
            && !exists("ServiceAccount", account)
        {
            problems.push(format!("{at}: service account {account} is not defined"));
        }
        let claims: BTreeSet<&str> = object["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|claim| claim["metadata"]["name"].as_str())
            .collect();
        let volumes = pod_volumes(spec);
        for (volume_name, volume) in &volumes {
            for (field, name_field, kind) in [
                ("configMap", "name", "ConfigMap"),
                ("secret", "secretName", "Secret"),
            ] {
                let source = &volume[field];
                if let Some(object_name) = source[name_field].as_str()
                    && source["optional"] != true
                    && !exists(kind, object_name)
                {
                    problems.push(format!(
                        "{at}: volume {volume_name}: {kind} {object_name} is not defined"
                    ));
                }
            }
        }
        for container in pod_containers(spec) {
            let container_name = container["name"].as_str().unwrap_or_default();
            let ports = declared_ports(container);
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                for handler in ["httpGet", "tcpSocket", "grpc"] {
                    if let Some(port) = port_ref(&container[probe][handler]["port"])
                        && !ports.contains(&port)
                    {
                        problems.push(format!(
                            "{at}: {container_name} {probe} uses port {port}, which the container does not declare"
                        ));
                    }
                }
            }
            for source in container["envFrom"].as_array().into_iter().flatten() {
                for (field, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
                    if let Some(object_name) = source[field]["name"].as_str()
                        && source[field]["optional"] != true
                        && !exists(kind, object_name)
                    {
                        problems.push(format!(
                            "{at}: {container_name} envFrom {kind} {object_name} is not defined"
                        ));
                    }
                }
            }
            for variable in container["env"].as_array().into_iter().flatten() {
                for (field, kind) in [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")]
                {
                    let reference = &variable["valueFrom"][field];
                    let (Some(object_name), Some(key)) =
                        (reference["name"].as_str(), reference["key"].as_str())
                    else {
                        continue;
                    };
                    if reference["optional"] == true {
                        continue;
                    }
                    // A Secret may come from a secret store: only a rendered one is checked.
                    match find(context, kind, object_name) {
                        Some(object) if !object_data(object).contains_key(key) => problems.push(format!(
                            "{at}: {container_name} env {}: {kind} {object_name} has no key {key}",
                            variable["name"].as_str().unwrap_or_default()
                        )),
                        None if kind == "ConfigMap" => problems.push(format!(
                            "{at}: {container_name} env {}: ConfigMap {object_name} is not defined",
                            variable["name"].as_str().unwrap_or_default()
                        )),
                        _ => {}
                    }
                }
            }
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let mount_name = mount["name"].as_str().unwrap_or_default();
                if claims.contains(mount_name) {
                    continue;
                }
                match volumes.get(mount_name) {
                    None => problems.push(format!("{at}: {container_name} mounts unknown volume {mount_name}")),
                    Some(volume) if volume.get("configMap").is_some() && mount.get("subPath").is_some() => {
                        problems.push(format!(
                            "{at}: {container_name} mounts ConfigMap volume {mount_name} with subPath: it would never update"
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }

    for object in objects {
        let at = format!("{}/{}", kind(object), name(object));
        match kind(object) {
            "Service" => {
                let selector = labels(&object["spec"]["selector"]);
                if selector.is_empty() {
                    continue;
                }
                let targets: Vec<&Pod<'_>> = pods
                    .iter()
                    .filter(|pod| matches(&selector, &pod.labels))
                    .collect();
                if targets.is_empty()
                    && !context_pods.iter().any(|labels| matches(&selector, labels))
                {
                    problems.push(format!("{at}: selector {selector:?} matches no pod"));
                }
                for port in object["spec"]["ports"].as_array().into_iter().flatten() {
                    let target = port_ref(&port["targetPort"]).or_else(|| port_ref(&port["port"]));
                    for pod in &targets {
                        if let Some(target) = &target
                            && !pod.ports().contains(target)
                        {
                            problems.push(format!(
                                "{at}: targetPort {target} is not a port of {}",
                                pod.at
                            ));
                        }
                    }
                }
            }
            "PodDisruptionBudget" => {
                let selector = labels(&object["spec"]["selector"]["matchLabels"]);
                if !context_pods.iter().any(|labels| matches(&selector, labels)) {
                    problems.push(format!("{at}: selector {selector:?} matches no pod"));
                }
            }
            "HorizontalPodAutoscaler" | "ScaledObject" => {
                let target = &object["spec"]["scaleTargetRef"];
                let target_kind = target["kind"].as_str().unwrap_or("Deployment");
                let target_name = target["name"].as_str().unwrap_or_default();
                if !exists(target_kind, target_name) {
                    problems.push(format!(
                        "{at}: target {target_kind}/{target_name} is not defined"
                    ));
                }
                for trigger in object["spec"]["triggers"].as_array().into_iter().flatten() {
                    let auth = &trigger["authenticationRef"];
                    if let Some(auth_name) = auth["name"].as_str() {
                        let auth_kind = auth["kind"].as_str().unwrap_or("TriggerAuthentication");
                        if !exists(auth_kind, auth_name) {
                            problems.push(format!(
                                "{at}: authentication {auth_kind}/{auth_name} is not defined"
                            ));
                        }
                    }
                }
            }
            "TriggerAuthentication" => {
                for (field, kind) in [
                    ("secretTargetRef", "Secret"),
                    ("configMapTargetRef", "ConfigMap"),
                ] {
                    for reference in object["spec"][field].as_array().into_iter().flatten() {
                        let object_name = reference["name"].as_str().unwrap_or_default();
                        let key = reference["key"].as_str().unwrap_or_default();
                        match find(context, kind, object_name) {
                            None => {
                                problems.push(format!("{at}: {kind} {object_name} is not defined"))
                            }
                            Some(found) if !object_data(found).contains_key(key) => problems
                                .push(format!("{at}: {kind} {object_name} has no key {key}")),
                            Some(_) => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::parse_yaml_stream;

    #[test]
    fn a_service_on_a_missing_port_and_a_subpath_configmap_are_found() {
        let objects = parse_yaml_stream(
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: switchyard
          ports: [{name: ops, containerPort: 9102}]
          readinessProbe: {httpGet: {path: /readyz, port: ops}}
          volumeMounts: [{name: rules, mountPath: /etc/rules/a.toml, subPath: a.toml}]
      volumes: [{name: rules, configMap: {name: rules}}]
"#,
        )
        .unwrap();
        let problems = problems(&objects, &objects).join("\n");
        assert!(
            problems.contains("Service/web: targetPort http is not a port of Deployment/web"),
            "{problems}"
        );
        assert!(
            problems.contains("ConfigMap rules is not defined"),
            "{problems}"
        );
        assert!(problems.contains("with subPath"), "{problems}");
    }
}
