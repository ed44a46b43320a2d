//! Introspection through `palisadectl`'s client (the code behind `palisadectl nodes`, `node`,
//! `wait`, `explain`, `rejected`), and the Prometheus metrics.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{allow, pod, shop, AgentOpts};
use palisade_agent::Capacities;
use palisadectl::output::Output;
use palisadectl::{get, remote};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).expect("JSON output")
}

/// `rejected` (JSON, every namespace) once `done` holds of it; the last answer after 20 s.
async fn rejected_when(
    op: &remote::Conn,
    done: impl Fn(&remote::RejectedReport) -> bool,
) -> remote::RejectedReport {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = remote::rejected(op, None, true).await.unwrap();
        if done(&report) || std::time::Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_node_wait_explain_and_rejected() {
    let c = shop().await;
    let op = c.operator();
    let nodes = json(
        &remote::nodes(&op, &Default::default(), Default::default(), Output::Json)
            .await
            .unwrap(),
    );
    let names: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["n1", "n2", "n3"]);
    let n3 = &nodes["nodes"][2];
    assert_eq!(n3["connected"], false);
    assert_eq!(n3["ackedVersion"], 0);
    assert!(n3["lagRevisions"].as_u64().unwrap() > 0);
    // Filters for large clusters, and a summary line of every node.
    let lagging = remote::NodeFilter {
        lagging: true,
        name: None,
    };
    let text = remote::nodes(&op, &lagging, Default::default(), Output::Table)
        .await
        .unwrap();
    assert!(
        text.contains("3 nodes: 2 in sync, 1 lagging, 1 not connected"),
        "{text}"
    );
    assert!(text.contains("\nn3 ") && !text.contains("\nn1 "), "{text}");
    let named = remote::NodeFilter {
        lagging: false,
        name: Some("pool-*".into()),
    };
    let text = remote::nodes(&op, &named, Default::default(), Output::Table)
        .await
        .unwrap();
    assert!(text.contains("no node matches"), "{text}");
    let named = remote::NodeFilter {
        lagging: false,
        name: Some("n?".into()),
    };
    let v = json(
        &remote::nodes(&op, &named, Default::default(), Output::Json)
            .await
            .unwrap(),
    );
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    // The controller's version, as `palisadectl version` shows it.
    let (version, replica) = remote::server_version(&op).await.unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(replica, 1);

    let n2 = json(
        &remote::node(
            &op,
            "n2",
            Some(Default::default()),
            Default::default(),
            true,
        )
        .await
        .unwrap(),
    );
    assert_eq!(n2["connected"], true);
    assert_eq!(n2["desiredVersion"], n2["ackedVersion"]);
    assert_eq!(n2["slice"]["endpoints"]["10.0.0.2"]["pod"]["name"], "api");
    let text = remote::node(
        &op,
        "n2",
        Some(Default::default()),
        Default::default(),
        false,
    )
    .await
    .unwrap();
    assert!(
        text.contains("ENDPOINTS") && text.contains("shop/api"),
        "{text}"
    );
    // -n: only that namespace's endpoints (and the sets they use); the figures of the whole
    // slice stay.
    let only = |ns| {
        Some(remote::SliceView {
            namespace: Some(ns),
        })
    };
    let text = remote::node(&op, "n2", only("other"), Default::default(), false)
        .await
        .unwrap();
    assert!(
        text.contains("namespace other: 0 endpoints, 0 address sets")
            && text.contains("no pod of namespace other on this node")
            && text.contains("1 endpoints")
            && !text.contains("shop/api"),
        "{text}"
    );
    let v = json(
        &remote::node(&op, "n2", only("shop"), Default::default(), true)
            .await
            .unwrap(),
    );
    assert_eq!(v["slice"]["namespace"], "shop");
    assert_eq!(v["slice"]["endpoints"]["10.0.0.2"]["pod"]["name"], "api");
    assert_eq!(v["slice"]["digest"], n2["slice"]["digest"]);
    // -o wide: more columns, the same rows.
    let wide = remote::nodes(&op, &Default::default(), Default::default(), Output::Wide)
        .await
        .unwrap();
    let header = wide.lines().nth(1).unwrap();
    assert!(
        header.contains("LAG-S") && header.contains("AGENT") && header.contains("ACKED-DIGEST"),
        "{wide}"
    );
    let n2_row = wide.lines().find(|l| l.starts_with("n2 ")).unwrap();
    assert!(
        n2_row.contains(&n2["ackedDigest"].as_str().unwrap()[..16]),
        "{wide}"
    );
    let narrow = remote::nodes(&op, &Default::default(), Default::default(), Output::Table)
        .await
        .unwrap();
    assert!(!narrow.contains("ACKED-DIGEST"), "{narrow}");
    let err = remote::node(&op, "nope", None, Default::default(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NotFound") && err.contains("no node nope"),
        "{err}"
    );

    // n3's agent is not running: the latest revision is not realized, and n3 is named.
    let (text, realized) = remote::wait(&op, None, Duration::from_millis(300), false)
        .await
        .unwrap();
    assert!(!realized);
    assert!(
        text.contains("n3") && text.contains("not connected"),
        "{text}"
    );
    let (out, realized) = remote::wait(&op, None, Duration::from_millis(100), true)
        .await
        .unwrap();
    assert!(!realized);
    assert_eq!(json(&out)["lagging"][0]["node"], "n3");

    let req = |src: &str, dst: &str, port: u32| palisade_proto::v1::ExplainFlowRequest {
        node: String::new(),
        source: src.into(),
        destination: dst.into(),
        protocol: 6,
        port,
        consistent: false,
    };
    let (text, allowed) = remote::explain(&op, req("shop/web", "shop/api", 8080), false)
        .await
        .unwrap();
    assert!(allowed, "{text}");
    assert!(
        text.contains("allowed by") && text.contains("shop/api spec.ingress[0]"),
        "{text}"
    );
    let (out, allowed) = remote::explain(&op, req("shop/web", "shop/db", 5432), true)
        .await
        .unwrap();
    assert!(!allowed);
    assert_eq!(json(&out)["ingress"]["result"], "denied");
    assert_eq!(json(&out)["ingress"]["node"], "n3");
    // Why denied: every rule of the isolating policy, with what did not match.
    let miss = &json(&out)["ingress"]["notMatched"][0];
    assert_eq!(miss["policy"], "shop/db");
    assert_eq!(miss["peers"]["matched"], false);
    assert!(
        miss["peers"]["why"]
            .as_str()
            .unwrap()
            .contains("shop/web has app=web, not app=api"),
        "{miss}"
    );
    // Online and offline explanations are one document: the same flow through `evaluate`
    // on the same objects gives the same JSON.
    let objects = [
        pod("shop", "web", "web", "n1", "10.0.0.1"),
        pod("shop", "api", "api", "n2", "10.0.0.2"),
        pod("shop", "db", "db", "n3", "10.0.0.3"),
        allow("shop", "api", "api", "web", 8080),
        allow("shop", "db", "db", "api", 5432),
    ]
    .join("---\n");
    let loaded = palisadectl::load::parse_sources(&[("app.yaml".into(), objects)], "default");
    let engine = loaded.engine();
    let view = palisade_policy::cluster::ClusterView::new(&engine);
    let offline = palisadectl::evaluate::explain(
        &engine,
        &view,
        "10.0.0.1".parse().unwrap(),
        "10.0.0.3".parse().unwrap(),
        palisade_policy::cluster::Probe {
            port: 5432,
            protocol: palisade_policy::model::Protocol::Tcp,
        },
        true,
    );
    assert_eq!(json(&offline.text), json(&out));
    // Against one node: a flow neither end of which is on it is refused, and says where
    // they are.
    let mut on_n2 = req("shop/web", "shop/db", 5432);
    on_n2.node = "n2".into();
    let err = remote::explain(&op, on_n2, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither end of the flow is on node n2")
            && err.contains("shop/web is on node n1")
            && err.contains("shop/db is on node n3"),
        "{err}"
    );
    let mut on_n3 = req("shop/web", "shop/db", 5432);
    on_n3.node = "n3".into();
    let (out, _) = remote::explain(&op, on_n3, true).await.unwrap();
    assert_eq!(json(&out)["egress"]["result"], "notChecked");
    assert!(json(&out)["egress"]["reason"]
        .as_str()
        .unwrap()
        .contains("shop/web is on node n1, not on n3"));
    let err = remote::explain(&op, req("shop/nope", "shop/db", 5432), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no pod shop/nope"), "{err}");

    let report = remote::rejected(&op, None, false).await.unwrap();
    assert_eq!(
        (report.rejected, report.findings),
        (0, 0),
        "{}",
        report.text
    );
    assert!(
        report.text.starts_with("No rejected objects.\n"),
        "{}",
        report.text
    );
    c.write("bad.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]}\n");
    let rejected = json(&rejected_when(&op, |r| r.rejected > 0).await.text);
    assert_eq!(rejected["objects"][0]["object"], "shop/bad");
    assert!(rejected["objects"][0]["errors"][0]
        .as_str()
        .unwrap()
        .contains("except[0]"));

    // A valid policy that is probably wrong: listed as a lint finding over the replicated
    // state, counted in the metrics.
    c.write("typo.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo, namespace: shop}\nspec: {podSelector: {matchLabels: {app: wbe}}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: types, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Ingress], egress: [{to: [{podSelector: {}}]}]}\n");
    // Findings asked for are at most 10 s old (a lint holds the apply thread).
    let report = rejected_when(&op, |r| r.findings > 1).await;
    let found = json(&report.text);
    // Sorted by object: shop/types, then shop/typo.
    let types = &found["findings"][0];
    let typo = &found["findings"][1];
    assert_eq!(typo["object"], "shop/typo", "{found}");
    assert_eq!(typo["check"], "selector-matches-nothing");
    assert_eq!(typo["field"], "spec.podSelector");
    assert!(
        typo["suggestion"]
            .as_str()
            .unwrap()
            .contains("did you mean 'app=web'?"),
        "{found}"
    );
    // Rules policyTypes leaves out are known to every replica, whatever the source.
    assert_eq!(types["object"], "shop/types", "{found}");
    assert_eq!(types["check"], "unused-rules");
    assert_eq!(types["field"], "spec.egress");
    let metrics = c.http_get("/metrics").await;
    assert!(
        metrics.contains("palisade_lint_findings{check=\"selector-matches-nothing\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("palisade_lint_findings{check=\"unused-rules\"} 1"));
    assert!(metrics.contains("palisade_lint_findings{check=\"shared-pod-ip\"} 0"));

    // -n filters what is shown, and says what it leaves out; the counts behind the exit
    // status are those shown.
    let other = remote::rejected(&op, Some("other"), false).await.unwrap();
    assert_eq!((other.rejected, other.findings), (0, 0), "{}", other.text);
    assert!(
        other.text.contains(&format!(
            "in namespace other (1 rejected and {} findings elsewhere)",
            report.findings
        )),
        "{}",
        other.text
    );
    let shop = remote::rejected(&op, Some("shop"), true).await.unwrap();
    assert_eq!(
        (shop.rejected, shop.findings),
        (1, report.findings),
        "{}",
        shop.text
    );
    assert_eq!(json(&shop.text)["namespace"], "shop");
    // A problem that names no object (a file that does not parse) may hide any namespace's
    // objects: -n shows it whatever the namespace.
    c.write("broken.yaml", "kind: [\n");
    rejected_when(&op, |r| r.rejected > 1).await;
    let other = remote::rejected(&op, Some("other"), true).await.unwrap();
    assert_eq!(other.rejected, 1, "{}", other.text);
    let v = json(&other.text);
    assert_eq!(v["objects"][0]["object"], "", "{v}");
    assert_eq!(v["leftOut"]["rejected"], 1, "{v}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_objects_as_held_with_their_owner() {
    let c = shop().await;
    let op = c.operator();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let got = get::get(
        &op,
        "po",
        &names(&["shop/web", "api", "gone"]),
        "shop",
        Default::default(),
        Output::Json,
    )
    .await
    .unwrap();
    assert!(!got.all_found, "shop/gone is not held");
    let v = json(&got.text);
    assert!(v["revision"].as_u64().unwrap() > 0);
    let objects = v["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 3, "one answer per name, in order: {v}");
    assert_eq!(objects[0]["kind"], "Pod");
    assert_eq!(objects[0]["name"], "shop/web");
    assert_eq!(objects[0]["owner"], "manifests");
    assert_eq!(objects[0]["object"]["labels"]["app"], "web");
    assert_eq!(
        objects[1]["name"], "shop/api",
        "a bare name is in --namespace"
    );
    assert_eq!(objects[2]["found"], false);

    let got = get::get(
        &op,
        "netpol",
        &names(&["shop/db"]),
        "default",
        Default::default(),
        Output::Table,
    )
    .await
    .unwrap();
    assert!(got.all_found);
    assert!(
        got.text.contains("NetworkPolicy") && got.text.contains("shop/db  manifests"),
        "{}",
        got.text
    );

    // -o wide: what Palisade uses of each object.
    let got = get::get(
        &op,
        "po",
        &names(&["shop/web"]),
        "default",
        Default::default(),
        Output::Wide,
    )
    .await
    .unwrap();
    let row = got.text.lines().find(|l| l.starts_with("Pod")).unwrap();
    assert!(
        row.contains("10.0.0.1") && row.contains("n1") && row.contains("app=web"),
        "{}",
        got.text
    );
    let got = get::get(
        &op,
        "netpol",
        &names(&["shop/db"]),
        "default",
        Default::default(),
        Output::Wide,
    )
    .await
    .unwrap();
    assert!(got.text.contains("POD-SELECTOR"), "{}", got.text);
    let row = got
        .text
        .lines()
        .find(|l| l.starts_with("NetworkPolicy"))
        .unwrap();
    assert!(
        row.contains("app=db") && row.contains("1 rules") && row.ends_with("-"),
        "{}",
        got.text
    );

    let err = get::get(
        &op,
        "Service",
        &names(&["x"]),
        "default",
        Default::default(),
        Output::Table,
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("\"Service\"") && err.contains("NetworkPolicy"),
        "{err}"
    );
    // A name the server cannot read is named by its position.
    let err = remote::client(&op)
        .await
        .unwrap()
        .get_objects(palisade_proto::v1::GetObjectsRequest {
            objects: vec![palisade_proto::v1::ObjectKey {
                kind: "Pod".into(),
                name: "no-namespace".into(),
            }],
            consistent: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("objects[0].name"), "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_that_does_not_fit_fails_closed_and_is_reported() {
    let mut c = shop().await;
    // n3's maps hold no rules: its endpoint (db, which allows api on 5432) is failed closed,
    // acked, and reported, never silently truncated.
    c.start_agent(
        "n3",
        AgentOpts {
            capacities: Capacities {
                rules: Some(0),
                ..Capacities::default()
            },
            ..AgentOpts::default()
        },
    );
    c.in_sync("n3").await;
    c.realized(c.revision()).await;
    let op = c.operator();
    let n3 = json(
        &remote::node(&op, "n3", None, Default::default(), true)
            .await
            .unwrap(),
    );
    assert_eq!(n3["failedClosed"], serde_json::json!(["10.0.0.3"]));
    assert!(
        n3["capacityWarning"]
            .as_str()
            .unwrap()
            .contains("rule entries"),
        "{n3}"
    );
    assert_eq!(n3["capacities"]["rules"], 0);
    let text = remote::node(&op, "n3", None, Default::default(), false)
        .await
        .unwrap();
    assert!(text.contains("FAILED CLOSED   10.0.0.3"), "{text}");
    let table = remote::nodes(&op, &Default::default(), Default::default(), Output::Table)
        .await
        .unwrap();
    assert!(table.contains("FAILED-CLOSED"), "{table}");
    let page = c.http_get("/metrics").await;
    assert!(
        page.contains("palisade_failed_closed_endpoints 1\n"),
        "{page}"
    );
    assert!(page.contains("palisade_nodes_degraded 1\n"), "{page}");

    // Room again (a restarted agent with bigger maps): the report clears with the next ack.
    c.stop_agent("n3").await;
    c.start_agent("n3", AgentOpts::default());
    c.write("more.yaml", &allow("shop", "db2", "db", "web", 5432));
    let r = c.next_revision(c.revision()).await;
    c.realized(r).await;
    let n3 = json(
        &remote::node(&op, "n3", None, Default::default(), true)
            .await
            .unwrap(),
    );
    assert_eq!(n3["failedClosed"], serde_json::json!([]), "{n3}");
    let page = c.http_get("/metrics").await;
    assert!(page.contains("palisade_nodes_degraded 0\n"), "{page}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_file_waits_for_the_revision_that_holds_it() {
    let mut c = shop().await;
    c.start_agent("n3", AgentOpts::default());
    c.in_sync("n3").await;
    let op = c.operator();
    let before = c.revision();
    let text = allow("shop", "web-in", "web", "api", 80);
    c.write("web.yaml", &text);
    let loaded = palisadectl::load::parse_sources(&[("web.yaml".into(), text)], "default");
    let objects: Vec<_> = loaded.objects.values().map(|(_, o)| o).collect();
    let revision = palisadectl::held::revision_holding(&op, &objects, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(revision > before, "{revision} after {before}");
    let got = palisadectl::get::get(
        &op,
        "netpol",
        &["shop/web-in".into()],
        "default",
        Default::default(),
        Output::Table,
    )
    .await
    .unwrap();
    assert!(got.all_found);
    let (_, realized) = remote::wait(&op, Some(revision), Duration::from_secs(20), false)
        .await
        .unwrap();
    assert!(realized);
    // The file as edited but never committed (not in the manifests directory): it cannot
    // be held, and the wait says which object is not, instead of answering early.
    let other = allow("shop", "never", "web", "api", 81);
    let loaded = palisadectl::load::parse_sources(&[("x.yaml".into(), other)], "default");
    let objects: Vec<_> = loaded.objects.values().map(|(_, o)| o).collect();
    let err = palisadectl::held::revision_holding(&op, &objects, Duration::from_millis(300))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("NetworkPolicy shop/never (not held)"), "{err}");
    c.shutdown().await;
}
