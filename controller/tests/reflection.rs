//! grpcurl's view of the controller, through an independent client: Python's grpcio and
//! grpcio-reflection (installed by scripts/setup.sh) list the services over reflection v1 and
//! v1alpha and call introspection with messages built from the served descriptors alone.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{allow, pod, AgentOpts, Cluster};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_reflection_client_lists_and_calls_everything() {
    let manifests = vec![(
        "app.yaml",
        [
            pod("shop", "web", "web", "n1", "10.0.0.1"),
            pod("shop", "api", "api", "n2", "10.0.0.2"),
            allow("shop", "api", "api", "web", 8080),
        ]
        .join("---\n"),
    )];
    let mut c = Cluster::start(&manifests, &["n1", "n2"]).await;
    c.start_agent("n2", AgentOpts::default());
    c.all_in_sync().await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reflection_client.py");
    let path = |p: &str| c.path(p).display().to_string();
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--addr", &c.addr.to_string()])
        .args([
            "--ca",
            &path("certs/ca.pem"),
            "--cert",
            &path("certs/operator-admin.pem"),
            "--key",
            &path("certs/operator-admin-key.pem"),
        ])
        .args(["--node", "n2", "--flow", "shop/web", "shop/api", "8080"])
        .args(["--pod", "shop/api"])
        .output()
        .await
        .expect("python3 runs (scripts/setup.sh installs grpcio and grpcio-reflection)");
    assert!(
        out.status.success(),
        "reflection client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");

    // Old and new grpcurl both work: each reflection protocol lists everything, itself included.
    for (protocol, itself) in [
        ("services_v1", "grpc.reflection.v1.ServerReflection"),
        (
            "services_v1alpha",
            "grpc.reflection.v1alpha.ServerReflection",
        ),
    ] {
        let services: Vec<&str> = v[protocol]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for s in [
            "palisade.v1.Sync",
            "palisade.v1.Introspection",
            "palisade.v1.Admin",
            "palisade.v1.Raft",
            "grpc.health.v1.Health",
            itself,
        ] {
            assert!(services.contains(&s), "{protocol} lists {s}: {services:?}");
        }
    }
    let methods = v["introspection_methods"].as_array().unwrap();
    assert_eq!(methods.len(), 8, "{methods:?}");
    let nodes: Vec<&str> = v["list_nodes"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, vec!["n1", "n2"]);
    assert_eq!(v["get_node"]["connected"], true);
    assert_eq!(v["get_node"]["slice"]["endpoints"][0]["pod"]["name"], "api");
    assert_eq!(v["explain"]["allowed"], true);
    assert_eq!(v["explain"]["ingress"]["result"], "RESULT_ALLOWED");
    assert_eq!(v["health"]["status"], "SERVING");
    let held = &v["get_objects"]["objects"][0];
    assert_eq!(held["found"], true, "{held}");
    assert_eq!(held["owner"], "manifests");
    let pod: serde_json::Value = serde_json::from_str(held["json"].as_str().unwrap()).unwrap();
    assert_eq!(pod["labels"]["app"], "api");
    c.shutdown().await;
}

/// The plaintext health listener (`--health-listen`) answers kubelet-style gRPC probes
/// without client certificates, for the overall service and `palisade.v1.Sync`; it serves
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_health_listener_answers_probes_and_nothing_else() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = Cluster::start_with(&[], &["n1"], move |config| {
        config.health_listen = Some(addr);
    })
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel.clone());
    for service in ["", "palisade.v1.Sync"] {
        let status = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    // Introspection is not on it.
    let mut introspection =
        palisade_proto::v1::introspection_client::IntrospectionClient::new(channel);
    let refused = introspection
        .list_nodes(palisade_proto::v1::ListNodesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    c.shutdown().await;
}
