//! The forced-egress variants: deploy/kubernetes/forced/ and deploy/compose.forced.yaml
//! install deploy/forced/rules.v4 and rules.v6, which redirect to the listeners the
//! proxy is started with and exclude the proxy's own user.

use std::collections::BTreeMap;

use crate::files::{
    array, container, flag_value, object, pod_spec, port, read, str_at, strings, yaml,
};
use crate::sandbox::Sandbox;
use crate::{KUBERNETES, check_agent_env};

const COMPOSE_FORCED: &str = "deploy/compose.forced.yaml";

/// The `--to-ports` of the rule matching `needle`, in rules.v4.
fn redirect_port(rules: &str, needle: &str) -> u16 {
    let line = rules
        .lines()
        .find(|l| l.contains(needle) && l.contains("REDIRECT"))
        .unwrap_or_else(|| panic!("no REDIRECT rule with `{needle}`:\n{rules}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The rules redirect the agent's TCP and DNS to `transparent` and `dns`, refuse other
/// UDP, and leave `proxy_user` alone — first, in each chain.
fn check_rules(proxy_user: u64, transparent: u16, dns: u16) {
    let v4 = read("deploy/forced/rules.v4");
    let v6 = read("deploy/forced/rules.v6");
    assert_eq!(redirect_port(&v4, "-p tcp -j"), transparent);
    assert_eq!(redirect_port(&v4, "-p udp --dport 53"), dns);
    assert_eq!(redirect_port(&v4, "-p tcp --dport 53"), dns);
    for (family, text) in [("v4", &v4), ("v6", &v6)] {
        for chain in ["EGRESS-REDIRECT", "EGRESS-FORCED"] {
            let first = text
                .lines()
                .find(|l| l.starts_with(&format!("-A {chain} ")));
            if let Some(first) = first {
                assert_eq!(
                    first,
                    format!("-A {chain} -m owner --uid-owner {proxy_user} -j RETURN"),
                    "{family} {chain}: the proxy's user is excluded first"
                );
            }
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("-A EGRESS-FORCED") && l.contains("-j REJECT")),
            "{family}"
        );
    }
    assert!(
        v4.lines()
            .any(|l| l.contains("EGRESS-FORCED -p udp -j REJECT")),
        "QUIC refused"
    );
}

#[test]
fn the_forced_overlay_redirects_to_the_listeners_the_sidecar_opens() {
    // The ConfigMap holds the two files verbatim.
    let configmap = yaml(&format!("{KUBERNETES}/forced/redirect-rules.yaml"));
    for family in ["rules.v4", "rules.v6"] {
        assert_eq!(
            str_at(&configmap["data"], family),
            read(&format!("deploy/forced/{family}")),
            "{family} differs from deploy/forced/"
        );
    }
    // The patch: the sidecar's new args (applied to the base's), then the init container
    // at index 0.
    let patch = yaml(&format!("{KUBERNETES}/forced/forced.patch.yaml"));
    let ops = array(&patch);
    let pod = pod_spec();
    let proxy = container(&pod["initContainers"], "egress-proxy");
    assert_eq!(
        pod["initContainers"][0]["name"], "egress-proxy",
        "the patch appends to initContainers/0's args"
    );
    let mut args = strings(&proxy["args"]);
    for op in ops
        .iter()
        .filter(|op| op["path"] == "/spec/template/spec/initContainers/0/args/-")
    {
        args.push(str_at(op, "value").to_owned());
    }
    let redirect = ops
        .iter()
        .find(|op| op["path"] == "/spec/template/spec/initContainers/0")
        .expect("the init container");
    assert_eq!(redirect["value"]["name"], "egress-redirect");
    assert!(
        redirect["value"].get("restartPolicy").is_none(),
        "run to completion"
    );
    let caps = strings(&redirect["value"]["securityContext"]["capabilities"]["add"]);
    assert!(caps.contains(&"NET_ADMIN".to_owned()));
    let proxy_user = proxy["securityContext"]["runAsUser"].as_u64().unwrap();
    check_rules(
        proxy_user,
        port(&flag_value(&args, "--transparent-listen")),
        port(&flag_value(&args, "--dns-listen")),
    );
    assert_eq!(flag_value(&args, "--dns-answer"), "upstream");
    // The patched sidecar starts with those args.
    let env: Vec<(String, String)> = array(&proxy["env"])
        .iter()
        .map(|e| (str_at(e, "name").to_owned(), str_at(e, "value").to_owned()))
        .collect();
    let mut sandbox = Sandbox::new();
    for mount in array(&proxy["volumeMounts"]) {
        sandbox.kubernetes_volume(&pod, mount);
    }
    sandbox.start(&args, &env);
}

#[test]
fn the_forced_compose_variant_installs_the_same_rules_for_its_proxy() {
    let compose = yaml(COMPOSE_FORCED);
    let services = &compose["services"];
    let proxy = &services["egress-proxy"];
    let args = strings(&proxy["command"]);
    let proxy_user: u64 = str_at(proxy, "user")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    check_rules(
        proxy_user,
        port(&flag_value(&args, "--transparent-listen")),
        port(&flag_value(&args, "--dns-listen")),
    );
    let redirect = &services["egress-redirect"];
    assert_eq!(redirect["network_mode"], "service:egress-proxy");
    let source = array(&redirect["volumes"])
        .iter()
        .find(|v| v["target"] == "/etc/egress-redirect")
        .expect("the rules are mounted");
    assert_eq!(source["source"], "./forced");
    let agent = &services["agent"];
    assert_eq!(
        agent["network_mode"], "service:egress-proxy",
        "the agent is behind the rules"
    );
    let agent_user: u64 = str_at(agent, "user")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        agent_user, proxy_user,
        "the agent must not run as the proxy's user"
    );
    assert_eq!(
        agent["depends_on"]["egress-redirect"]["condition"], "service_completed_successfully",
        "the agent starts only once the rules are in"
    );
    let env: BTreeMap<String, String> = object(&agent["environment"])
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    check_agent_env(&env, "/etc/egress-proxy/ca/ca.crt", "http://127.0.0.1:8080");
    // The proxy starts with that command.
    let mut sandbox = Sandbox::new();
    for volume in array(&proxy["volumes"]) {
        let target = str_at(volume, "target");
        match volume["type"].as_str() {
            Some("bind") => sandbox.copy_dir(
                &crate::files::deploy_dir().join(str_at(volume, "source")),
                target,
            ),
            _ => sandbox.dir(target),
        }
    }
    for secret in array(&proxy["secrets"]) {
        sandbox.text(str_at(secret, "target"), "test-token");
    }
    sandbox.start(&args, &[]);
}
