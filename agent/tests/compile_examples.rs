//! The seed scenario (examples/) through the real loader and the compiler: the
//! tables, read the way the kernel reads them, give what the evaluator says.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use agent::compile::testgen::TableModel;
use agent::compile::{compile, Compiled};
use agent::eval::{Evaluator, Packet, PolicySet, EPHEMERAL_PORT};
use agent::model::ir::{Direction, Model, Protocol};

fn load() -> Model {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let loaded = agent::model::load_paths(&[dir]);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    loaded.model
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn endpoint<'c>(model: &Model, c: &'c Compiled, key: &str) -> &'c agent::compile::CompiledEndpoint {
    c.endpoints
        .iter()
        .find(|e| model.endpoints[e.endpoint_index].key() == key)
        .unwrap()
}

#[test]
fn seed_scenario_tables() {
    let model = load();
    let c = compile(&model).unwrap();
    let sim = TableModel::new(&c.tables).unwrap();
    let (frontend, backend, database) = (
        endpoint(&model, &c, "prod/frontend"),
        endpoint(&model, &c, "prod/backend"),
        endpoint(&model, &c, "prod/database"),
    );
    assert!(backend.has_staged && !frontend.has_staged && !database.has_staged);
    let ingress = |e: &agent::compile::CompiledEndpoint, pending, peer: &str, port| {
        c.describe(&sim.lookup(
            e.id,
            Direction::Ingress,
            pending,
            ip(peer),
            Protocol::TCP.number(),
            EPHEMERAL_PORT,
            port,
        ))
    };
    assert_eq!(
        ingress(database, false, "10.65.0.20", 8080),
        "default|gnp:database-allow-from-backend|allow|0"
    );
    assert_eq!(
        ingress(database, false, "10.65.0.10", 8080),
        "default|gnp:database-allow-from-backend|deny|-1"
    );
    assert_eq!(
        ingress(backend, false, "10.65.0.10", 8080),
        "__PROFILE__|pro:kns.prod|allow|0"
    );
    assert_eq!(
        ingress(backend, true, "fd65::10", 8080),
        "default|sgnp:backend-lockdown-staged|deny|-1"
    );

    // Every pair, both directions, both families, a few ports: tables == evaluator.
    let eval = Evaluator::new(&model);
    for e in &c.endpoints {
        let me = &model.endpoints[e.endpoint_index];
        for local in &me.ips {
            for peer in model
                .endpoints
                .iter()
                .flat_map(|p| &p.ips)
                .chain(&[ip("8.8.8.8"), ip("2001:db8::1")])
            {
                if peer.is_ipv6() != local.is_ipv6() {
                    continue;
                }
                for dir in [Direction::Ingress, Direction::Egress] {
                    for port in [22, 80, 8080, 8081] {
                        for (set, pending) in
                            [(PolicySet::Enforced, false), (PolicySet::Pending, true)]
                        {
                            let want = c.verdict_of(&eval.evaluate_end(
                                set,
                                e.endpoint_index,
                                dir,
                                *peer,
                                *local,
                                &Packet::tcp(port),
                            ));
                            let got = sim.lookup(
                                e.id,
                                dir,
                                pending && e.has_staged,
                                *peer,
                                Protocol::TCP.number(),
                                EPHEMERAL_PORT,
                                port,
                            );
                            assert_eq!(got, want, "{} {dir:?} {peer} {port} {set:?}", me.key());
                        }
                    }
                }
            }
        }
    }
}
