//! Key layout and value round trips, and real values as Patroni writes them (taken from Patroni's
//! own tests, docs and `Ha.touch_member`).

use super::*;
use serde_json::json;

fn layout() -> KeyLayout {
    KeyLayout::new(DEFAULT_NAMESPACE, "batman").unwrap()
}

#[test]
fn keys_are_built_and_parsed_under_namespace_and_scope() {
    let l = layout();
    assert_eq!(l.prefix(), "/service/batman/");
    assert_eq!(l.key(&ClusterKey::Leader), "/service/batman/leader");
    assert_eq!(l.key(&ClusterKey::Member("pg1".into())), "/service/batman/members/pg1");
    let all = [
        ClusterKey::Initialize,
        ClusterKey::Leader,
        ClusterKey::Member("pg-2".into()),
        ClusterKey::Config,
        ClusterKey::Failover,
        ClusterKey::Sync,
        ClusterKey::History,
        ClusterKey::Status,
    ];
    for key in all {
        assert_eq!(l.parse(&l.key(&key)), Some(KeyName::Cluster(key.clone())), "{key:?}");
    }
    for name in [KeyName::Failsafe, KeyName::LegacyLeaderOptime] {
        assert_eq!(l.parse(&l.key_of(&name)), Some(name.clone()));
    }
}

#[test]
fn foreign_and_unknown_keys_are_not_recognised() {
    let l = layout();
    for key in [
        "/service/robin/leader",
        "/service/batman",
        "/service/batman/",
        "/service/batman/members/",
        "/service/batman/members/a/b",
        "/service/batman/1/leader",
        "/service/batman/leaderx",
        "/other/batman/leader",
    ] {
        assert_eq!(l.parse(key), None, "{key}");
    }
}

#[test]
fn namespace_is_normalised_like_patroni() {
    for ns in ["service", "/service", "/service/", "//service//"] {
        let l = KeyLayout::new(ns, "batman").unwrap();
        assert_eq!(l.namespace(), "/service");
        assert_eq!(l.prefix(), "/service/batman/");
    }
    assert_eq!(KeyLayout::new("/", "b").unwrap().prefix(), "/b/");
    assert!(KeyLayout::new("/service", "").is_err());
    assert!(KeyLayout::new("/service", "a/b").is_err());
}

const PRIMARY: &str = r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"primary","version":"4.0.4","xlog_location":50331808,"timeline":3,"tags":{"clonefrom":true,"zone":"a"},"pending_restart":true,"pending_restart_reason":{"max_connections":{"old_value":"100","new_value":"101"}}}"#;
const REPLICA: &str = r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"replica","version":"4.0.4","xlog_location":50331700,"replay_lsn":50331700,"receive_lsn":50331808,"replication_state":"streaming","timeline":3,"tags":{"nofailover":false,"failover_priority":0}}"#;

#[test]
fn patroni_member_values_parse_and_unknown_fields_survive_a_round_trip() {
    let m = MemberValue::parse(PRIMARY.as_bytes()).unwrap();
    assert_eq!(m.role, Some(MemberRole::Primary));
    assert!(m.role.as_ref().unwrap().is_primary() && m.is_running());
    assert_eq!((m.xlog_location, m.timeline), (Some(50331808), Some(3)));
    assert!(m.tags.clonefrom() && !m.tags.nofailover());
    assert_eq!(m.tags.custom["zone"], json!("a"));
    assert!(m.extra.contains_key("pending_restart_reason"));
    let again: Value = serde_json::from_slice(&m.to_json()).unwrap();
    assert_eq!(again, serde_json::from_str::<Value>(PRIMARY).unwrap());

    let r = MemberValue::parse(REPLICA.as_bytes()).unwrap();
    assert_eq!(r.replication_state.as_deref(), Some("streaming"));
    assert_eq!((r.receive_lsn, r.replay_lsn), (Some(50331808), Some(50331700)));
    // An explicit nofailover wins over a priority of 0, as in Patroni's Tags.
    assert!(!r.tags.nofailover());
    assert_eq!(r.tags.failover_priority(), 0);
}

#[test]
fn loosely_typed_member_fields_read_like_patroni() {
    let m = MemberValue::parse(
        br#"{"role":"master","state":"stopped","xlog_location":"1234","timeline":"x","tags":{"nofailover":"on","failover_priority":"5","nosync":1}}"#,
    )
    .unwrap();
    assert!(m.role.unwrap().is_primary());
    assert_eq!((m.xlog_location, m.timeline), (Some(1234), None));
    assert!(m.tags.nofailover() && m.tags.nosync());
    assert_eq!(m.tags.failover_priority(), 0);
    let p = MemberValue::parse(br#"{"tags":{"failover_priority":0}}"#).unwrap();
    assert!(p.tags.nofailover(), "priority 0 without nofailover means nofailover");
    assert_eq!(MemberValue::parse(br#"{"role":"standby_leader"}"#).unwrap().role, Some(MemberRole::StandbyLeader));
    assert_eq!(MemberValue::parse(br#"{"role":"x"}"#).unwrap().role, Some(MemberRole::Other("x".into())));
    assert_eq!(MemberValue::parse(br#"{"tags":[1]}"#).unwrap().tags, Tags::default());
}

#[test]
fn legacy_governor_member_value_is_a_connection_url() {
    let m = MemberValue::parse(
        b"postgres://replicator:rep-pass@127.0.0.1:5434/postgres?application_name=http://127.0.0.1:8009/patroni",
    )
    .unwrap();
    assert_eq!(m.conn_url.as_deref(), Some("postgres://replicator:rep-pass@127.0.0.1:5434/postgres"));
    assert_eq!(m.api_url.as_deref(), Some("http://127.0.0.1:8009/patroni"));
}

#[test]
fn failover_values_in_every_form_patroni_accepts() {
    let f =
        FailoverValue::parse(br#"{"leader":"pg1","member":"pg2","scheduled_at":"2016-01-14T10:09:57.1394Z"}"#).unwrap();
    assert_eq!((f.leader.as_deref(), f.candidate.as_deref()), (Some("pg1"), Some("pg2")));
    assert_eq!(f.scheduled_at.as_deref(), Some("2016-01-14T10:09:57.1394Z"));
    assert_eq!(serde_json::from_slice::<Value>(&f.to_json()).unwrap()["member"], json!("pg2"));
    assert_eq!(FailoverValue::parse(br#"{"candidate":"pg3"}"#).unwrap().candidate.as_deref(), Some("pg3"));
    let legacy = FailoverValue::parse(b"pg1:pg2").unwrap();
    assert_eq!((legacy.leader.as_deref(), legacy.candidate.as_deref()), (Some("pg1"), Some("pg2")));
    for empty in [&b""[..], b"null", b"{}"] {
        assert!(FailoverValue::parse(empty).unwrap().is_empty());
    }
    assert!(matches!(FailoverValue::parse(b"[1]"), Err(ValueError::Shape { .. })));
    assert!(matches!(FailoverValue::parse(br#"{"leader":"#), Err(ValueError::Json(_))));
}

#[test]
fn sync_value_matches_patroni_format() {
    let s = SyncValue::new("pg1", &["pg3", "pg2"], None);
    assert_eq!(s.to_json(), br#"{"leader":"pg1","sync_standby":"pg2,pg3"}"#.to_vec());
    assert!(s.is_sync_standby("PG2") && !s.is_sync_standby("pg1"));
    let read = SyncValue::parse(br#"{"leader":"pg1","quorum":1,"sync_standby":"pg2, pg3"}"#).unwrap();
    assert_eq!(read.voters(), vec!["pg2", "pg3"]);
    assert_eq!(read.quorum, Some(1));
    let nulls = SyncValue::parse(br#"{"leader":"pg1","quorum":null,"sync_standby":null}"#).unwrap();
    assert!(nulls.voters().is_empty());
    assert!(SyncValue::parse(br#"{"sync_standby":"pg2"}"#).unwrap().voters().is_empty());
    assert!(matches!(SyncValue::parse(b"{"), Err(ValueError::Json(_))));
}

#[test]
fn status_values_current_stringly_and_legacy() {
    let s = StatusValue::parse(br#"{"optime":2164261704,"slots":{"ls":12345},"retain_slots":["pg0","pg1"]}"#).unwrap();
    assert_eq!(s.optime, Some(2164261704));
    assert_eq!(s.slots.as_ref().unwrap()["ls"], 12345);
    assert_eq!(s.retain_slots.as_deref(), Some(&["pg0".to_string(), "pg1".to_string()][..]));
    assert_eq!(StatusValue::parse(&s.to_json()).unwrap(), s);
    let stringly = StatusValue::parse(br#"{"optime":"7","slots":"{\"ls\":5}"}"#).unwrap();
    assert_eq!((stringly.optime, stringly.slots.unwrap()["ls"]), (Some(7), 5));
    assert_eq!(StatusValue::parse(b"2164261704").unwrap().optime, Some(2164261704));
}

#[test]
fn history_from_patroni_docs_and_round_trip() {
    let doc = br#"[[1,25623960,"no recovery target specified","2019-09-23T16:57:57+02:00"],
        [2,25624344,"no recovery target specified","2019-09-24T09:22:33+02:00","pg2"],
        [3,25624752,"no recovery target specified"]]"#;
    let h = TimelineHistory::parse(doc).unwrap();
    assert_eq!(h.0.len(), 3);
    assert_eq!(h.0[0].timestamp.as_deref(), Some("2019-09-23T16:57:57+02:00"));
    assert_eq!(h.0[1].new_leader.as_deref(), Some("pg2"));
    assert_eq!((h.0[2].timeline, h.0[2].lsn, h.0[2].timestamp.as_ref()), (3, 25624752, None));
    assert_eq!(TimelineHistory::parse(&h.to_json()).unwrap(), h);
    assert_eq!(TimelineHistory::parse(b"[]").unwrap(), TimelineHistory::default());
    assert!(matches!(TimelineHistory::parse(b"{}"), Err(ValueError::Shape { .. })));
    assert!(matches!(TimelineHistory::parse(br#"[["one",2,"x"]]"#), Err(ValueError::Json(_))));
}

#[test]
fn dynamic_config_from_the_rest_api_docs() {
    let c = DynamicConfig::parse(
        br#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_slots":true,"use_pg_rewind":true,"parameters":{"hot_standby":"on","wal_level":"hot_standby","max_wal_senders":5,"max_replication_slots":5,"max_connections":"100"}}}"#,
    )
    .unwrap();
    assert_eq!((c.ttl(), c.loop_wait(), c.retry_timeout()), (30, 10, 10));
    assert!(c.use_pg_rewind() && c.use_slots());
    assert_eq!(c.postgresql_parameters().unwrap()["max_connections"], json!("100"));
    assert_eq!(c.synchronous_mode(), SynchronousMode::Off);
    let d = DynamicConfig::default();
    assert_eq!((d.ttl(), d.maximum_lag_on_failover(), d.primary_start_timeout()), (30, 1_048_576, 300));
    assert!(!d.use_pg_rewind() && d.use_slots());
}

#[test]
fn synchronous_mode_in_its_spellings() {
    let mode =
        |v: Value| DynamicConfig(json!({ "synchronous_mode": v }).as_object().unwrap().clone()).synchronous_mode();
    assert_eq!(mode(json!(true)), SynchronousMode::On);
    assert_eq!(mode(json!("on")), SynchronousMode::On);
    assert_eq!(mode(json!("Quorum")), SynchronousMode::Quorum);
    assert_eq!(mode(json!(0)), SynchronousMode::Off);
    assert_eq!(mode(json!("off")), SynchronousMode::Off);
}

#[test]
fn config_patch_merges_and_null_removes_like_patch_config() {
    let mut c = DynamicConfig::parse(br#"{"ttl":30,"x":1,"postgresql":{"parameters":{"a":"1","b":"2"}}}"#).unwrap();
    let patch = json!({"ttl":20,"x":null,"postgresql":{"parameters":{"a":null,"c":"3"}},"new":{"k":1}});
    assert!(c.apply_patch(patch.as_object().unwrap()));
    assert_eq!(
        Value::Object(c.0.clone()),
        json!({"ttl":20,"postgresql":{"parameters":{"b":"2","c":"3"}},"new":{"k":1}})
    );
    assert!(!c.apply_patch(json!({"ttl":20,"gone":null}).as_object().unwrap()));
}

fn entry<'a>(key: &'a str, value: &'a str, rev: Revision) -> (&'a str, &'a [u8], Revision) {
    (key, value.as_bytes(), rev)
}

#[test]
fn view_of_a_patroni_cluster_with_broken_values_reported() {
    let view = ClusterView::from_entries(
        &layout(),
        [
            entry("/service/batman/initialize", "7340596209946584341", 2),
            entry("/service/batman/leader", "pg1", 9),
            entry("/service/batman/members/pg1", PRIMARY, 8),
            entry("/service/batman/members/pg2", REPLICA, 7),
            entry("/service/batman/members/broken", "{not json", 6),
            entry("/service/batman/config", r#"{"ttl":20,"synchronous_mode":"on"}"#, 3),
            entry("/service/batman/failover", r#"{"leader":"pg1","member":"pg2"}"#, 10),
            entry("/service/batman/sync", r#"{"leader":"pg1","sync_standby":"pg2"}"#, 11),
            entry("/service/batman/status", r#"{"optime":50331808}"#, 12),
            entry("/service/batman/optime/leader", "1", 1),
            entry("/service/batman/failsafe", "{", 4),
            entry("/service/batman/history", "[[1,25623960,\"x\"]]", 5),
            entry("/service/robin/leader", "other", 13),
            entry("/service/batman/1/leader", "citus", 14),
        ],
    );
    assert_eq!(view.system_identifier(), Some(7340596209946584341));
    assert_eq!(view.leader_name(), Some("pg1"));
    assert_eq!(view.leader.as_ref().unwrap().mod_revision, 9);
    assert_eq!(view.leader_member().unwrap().xlog_location, Some(50331808));
    assert_eq!(view.members.keys().collect::<Vec<_>>(), ["pg1", "pg2"]);
    assert_eq!(view.dynamic_config().ttl(), 20);
    assert_eq!(view.pending_failover().unwrap().candidate.as_deref(), Some("pg2"));
    assert!(view.sync.as_ref().unwrap().value.is_sync_standby("pg2"));
    assert_eq!(view.last_leader_lsn(), Some(50331808), "status wins over the legacy optime/leader");
    assert_eq!(view.history.as_ref().unwrap().value.0.len(), 1);
    let bad: Vec<_> = view.bad_values.iter().map(|b| (b.key.as_str(), b.mod_revision)).collect();
    assert_eq!(bad, [("members/broken", 6), ("failsafe", 4)]);
    assert!(view.bad_values[0].to_string().starts_with("members/broken (revision 6): the value is not valid JSON"));
}

#[test]
fn view_falls_back_to_legacy_optime_and_reports_empty_leader() {
    let view = ClusterView::from_relative_entries([
        entry("optime/leader", "2164261704", 5),
        entry("leader", "  ", 6),
        entry("failsafe", r#"{"pg1":"http://10.0.0.1:8008/patroni"}"#, 7),
        ("config", &[0xff, 0xfe][..], 8),
    ]);
    assert_eq!(view.last_leader_lsn(), Some(2164261704));
    assert_eq!(view.leader, None);
    assert_eq!(view.failsafe.as_ref().unwrap().value["pg1"], "http://10.0.0.1:8008/patroni");
    let errors: Vec<_> = view.bad_values.iter().map(|b| b.error.clone()).collect();
    assert_eq!(errors, [ValueError::Empty, ValueError::NotUtf8]);
    assert_eq!(view.dynamic_config(), DynamicConfig::default());
}

#[test]
fn view_from_a_dcs_snapshot() {
    let kv = |key: &str, value: &str| crate::kv::KeyValue {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        create_revision: 1,
        mod_revision: 4,
        version: 1,
        lease: 0,
    };
    let snap = ClusterSnapshot { revision: 4, keys: vec![kv("leader", "pg2"), kv("members/pg2", REPLICA)] };
    let view = ClusterView::from_snapshot(&snap);
    assert_eq!(view.leader_member().unwrap().role, Some(MemberRole::Replica));
    assert_eq!(view.members["pg2"].mod_revision, 4);
}
