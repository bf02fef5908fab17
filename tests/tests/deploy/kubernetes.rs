//! deploy/kubernetes: the sidecar, the agent, the iptables option, the kustomizations.

use std::collections::BTreeMap;
use std::fs;

use egress_proxy_tests::repo_root;

use crate::files::{
    array, container, flag_value, pod_spec, port, read, str_at, strings, volume, yaml, yaml_at,
};
use crate::sandbox::Sandbox;
use crate::{KUBERNETES, ROUTES, check_agent_env};

#[test]
fn the_sidecar_runs_the_proxy_with_its_args_volumes_and_env() {
    let pod = pod_spec();
    let proxy = container(&pod["initContainers"], "egress-proxy");
    assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
    assert!(
        proxy.get("command").is_none(),
        "the image's ENTRYPOINT is the binary"
    );
    let args = strings(&proxy["args"]);
    let env: Vec<(String, String)> = array(&proxy["env"])
        .iter()
        .map(|e| (str_at(e, "name").to_owned(), str_at(e, "value").to_owned()))
        .collect();
    let mut sandbox = Sandbox::new();
    for mount in array(&proxy["volumeMounts"]) {
        sandbox.kubernetes_volume(&pod, mount);
    }
    sandbox.start(&args, &env);

    // The probes ask the admin listener, which must listen beyond loopback.
    let admin = flag_value(&args, "--admin-listen");
    assert!(
        admin.starts_with("0.0.0.0:"),
        "the kubelet cannot reach {admin}"
    );
    let admin_port = array(&proxy["ports"])
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("an admin port")["containerPort"]
        .clone();
    assert_eq!(admin_port, port(&admin));
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(proxy[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(proxy[probe]["httpGet"]["port"], "admin", "{probe}");
    }
}

#[test]
fn the_agent_gets_the_ca_certificate_only_and_no_tokens() {
    let pod = pod_spec();
    let proxy = container(&pod["initContainers"], "egress-proxy");
    let agent = container(&pod["containers"], "agent");
    let env: BTreeMap<String, String> = array(&agent["env"])
        .iter()
        .map(|e| (str_at(e, "name").to_owned(), str_at(e, "value").to_owned()))
        .collect();
    let listen = flag_value(&strings(&proxy["args"]), "--listen");
    assert!(
        listen.starts_with("127.0.0.1:"),
        "the agent shares the pod's loopback"
    );
    let mut ca_path = None;
    for mount in array(&agent["volumeMounts"]) {
        let volume = volume(&pod, str_at(mount, "name"));
        let Some(secret) = volume.get("secret") else {
            continue;
        };
        let items = secret
            .get("items")
            .unwrap_or_else(|| panic!("the agent mounts all of Secret {}", secret["secretName"]));
        let keys: Vec<&str> = array(items).iter().map(|i| str_at(i, "key")).collect();
        assert_eq!(
            keys,
            ["ca.crt"],
            "the agent may mount ca.crt and nothing else of a Secret"
        );
        assert_eq!(secret["items"][0]["path"], "ca.crt");
        ca_path = Some(format!("{}/ca.crt", str_at(mount, "mountPath")));
    }
    let ca_path = ca_path.expect("the agent mounts ca.crt");
    check_agent_env(&env, &ca_path, &format!("http://{listen}"));
}

#[test]
fn the_iptables_option_lets_only_the_proxy_s_user_out() {
    let pod = pod_spec();
    let user = |name: &str, list: &str| {
        container(&pod[list], name)["securityContext"]["runAsUser"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} sets runAsUser"))
    };
    let proxy_user = user("egress-proxy", "initContainers");
    assert_ne!(
        user("agent", "containers"),
        proxy_user,
        "the agent must not run as the proxy's user"
    );
    let rules = yaml(&format!("{KUBERNETES}/iptables/lockdown-rules.yaml"));
    for family in ["rules.v4", "rules.v6"] {
        let text = str_at(&rules["data"], family);
        let owners: Vec<&str> = text.lines().filter(|l| l.contains("--uid-owner")).collect();
        assert_eq!(owners.len(), 1, "{family}: one owner rule");
        assert!(
            owners[0].ends_with(&format!("--uid-owner {proxy_user} -j RETURN")),
            "{family}"
        );
        assert!(
            text.lines().any(|l| l.contains("-j REJECT")),
            "{family}: the rest is refused"
        );
    }
    // The lock-down runs first: the patch puts it at index 0 of the init containers.
    let patch = yaml(&format!("{KUBERNETES}/iptables/lockdown.patch.yaml"));
    let first = &array(&patch)[0];
    assert_eq!(first["path"], "/spec/template/spec/initContainers/0");
    assert_eq!(first["value"]["name"], "egress-lockdown");
    assert!(
        first["value"].get("restartPolicy").is_none(),
        "a run-to-completion init container"
    );
}

#[test]
fn the_kustomizations_list_every_manifest_and_the_routes_match_compose() {
    let dir = repo_root().join(KUBERNETES);
    for kustomization in [dir.clone(), dir.join("iptables"), dir.join("forced")] {
        let listed = yaml_at(&kustomization.join("kustomization.yaml"));
        for entry in strings(&listed["resources"]) {
            assert!(
                kustomization.join(&entry).exists(),
                "{entry} is listed but missing"
            );
        }
        if let Some(patches) = listed.get("patches") {
            for patch in array(patches) {
                assert!(kustomization.join(str_at(patch, "path")).exists());
            }
        }
    }
    let listed = strings(&yaml(&format!("{KUBERNETES}/kustomization.yaml"))["resources"]);
    for entry in fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "{name} is not in kustomization.yaml"
            );
        }
    }
    let configmap = yaml(&format!("{KUBERNETES}/configmap.yaml"));
    assert_eq!(
        str_at(&configmap["data"], "routes.yaml"),
        read(ROUTES),
        "configmap.yaml must carry {ROUTES} unchanged"
    );
}
