//! One suite, every backend: each check runs on SQLite (always) and on PostgreSQL when
//! `DROVER_TEST_POSTGRES_URL` is set (CI sets it; unset, the PostgreSQL half prints a notice and
//! skips). On PostgreSQL each run gets a fresh schema so runs never see each other's rows.

use drover_store::*;

async fn sqlite_store() -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("drover.db").display());
    (SqlStore::open(&url).await.unwrap(), dir)
}

/// A store on a private schema of the test database, or `None` (with a notice) when unset.
async fn postgres_store(test: &str) -> Option<SqlStore> {
    let Ok(base) = std::env::var("DROVER_TEST_POSTGRES_URL") else {
        eprintln!("notice: DROVER_TEST_POSTGRES_URL is unset; skipping the PostgreSQL half of {test}");
        return None;
    };
    let schema = format!("drover_test_{}_{}", test, std::process::id());
    let admin = SqlStore::open(&base).await.expect("PostgreSQL from DROVER_TEST_POSTGRES_URL must be reachable");
    admin.execute_raw(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await.unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Some(SqlStore::open(&url).await.unwrap())
}

macro_rules! suite {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _dir) = super::sqlite_store().await;
                    super::checks::$name(&store).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(store) = super::postgres_store(stringify!($name)).await {
                        super::checks::$name(&store).await;
                    }
                }
            )+
        }
    };
}

suite!(
    experiments_round_trip,
    trials_and_allocations,
    metrics_are_idempotent_and_summarised,
    long_series_are_reduced_keeping_extremes,
    logs_page_in_order,
    checkpoints_register_once,
    checkpoints_scores_pins_and_deletes,
    concurrent_reports_are_all_stored_once,
    delete_removes_everything,
    reopening_keeps_data,
    params_versions_are_immutable_and_found_every_way,
    params_tags_move_and_follow_deletes,
    params_metadata_updates_and_names_list,
);

mod checks {
    use drover_store::*;

    fn experiment(name: &str) -> NewExperiment {
        NewExperiment {
            name: name.into(),
            description: Some("d".into()),
            state: "ACTIVE".into(),
            config_json: "{\"a\":1}".into(),
            config_yaml: "a: 1\n".into(),
            context: Some(vec![1, 2, 3, 0, 255]),
            created_at: 1000,
        }
    }

    async fn trial(store: &dyn Store, exp: i64, request_id: i64) -> i64 {
        store
            .create_trial(NewTrial {
                experiment_id: exp,
                request_id,
                state: "QUEUED".into(),
                hparams_json: "{\"lr\":0.1}".into(),
                seed: 42,
                created_at: 2000,
            })
            .await
            .unwrap()
    }

    fn point(group: MetricGroup, name: &str, step: i64, value: f64) -> MetricRow {
        MetricRow { group, name: name.into(), step, value, ts_ms: step }
    }

    pub async fn experiments_round_trip(store: &dyn Store) {
        let id = store.create_experiment(experiment("one")).await.unwrap();
        let id2 = store.create_experiment(experiment("two")).await.unwrap();
        assert_ne!(id, id2);
        let e = store.get_experiment(id).await.unwrap();
        assert_eq!((e.name.as_str(), e.state.as_str(), e.created_at, e.ended_at), ("one", "ACTIVE", 1000, None));
        assert_eq!(store.get_context(id).await.unwrap(), Some(vec![1, 2, 3, 0, 255]));
        assert!(store.has_context(id).await.unwrap());
        let bare = store.create_experiment(NewExperiment { context: None, ..experiment("bare") }).await.unwrap();
        assert!(!store.has_context(bare).await.unwrap());
        assert!(matches!(store.has_context(9999).await, Err(StoreError::NotFound(_))));
        store.set_experiment_state(id, "COMPLETED", Some(5000)).await.unwrap();
        let e = store.get_experiment(id).await.unwrap();
        assert_eq!((e.state.as_str(), e.ended_at), ("COMPLETED", Some(5000)));
        assert_eq!(store.list_experiments().await.unwrap().len(), 3);
        assert!(matches!(store.get_experiment(9999).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.set_experiment_state(9999, "ACTIVE", None).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.load_searcher_snapshot(id).await.unwrap(), None);
        store.save_searcher_snapshot(id, "{\"rng\":5}").await.unwrap();
        assert_eq!(store.load_searcher_snapshot(id).await.unwrap().as_deref(), Some("{\"rng\":5}"));
    }

    pub async fn trials_and_allocations(store: &dyn Store) {
        let exp = store.create_experiment(experiment("t")).await.unwrap();
        let t1 = trial(store, exp, 1).await;
        let t2 = trial(store, exp, 2).await;
        // The searcher's request id is unique within an experiment.
        assert!(matches!(
            store.create_trial(NewTrial { experiment_id: exp, request_id: 1, state: "QUEUED".into(), hparams_json: "{}".into(), seed: 1, created_at: 1 }).await,
            Err(StoreError::Conflict(_))
        ));
        store
            .update_trial(t1, TrialUpdate { state: Some("RUNNING".into()), stop_requested: Some(true), ..Default::default() })
            .await
            .unwrap();
        let t = store.get_trial(t1).await.unwrap();
        assert_eq!((t.state.as_str(), t.stop_requested, t.restarts, t.seed), ("RUNNING", true, 0, 42));
        store.update_trial(t1, TrialUpdate { restarts: Some(2), ..Default::default() }).await.unwrap();
        assert_eq!(store.get_trial(t1).await.unwrap().state, "RUNNING", "an update leaves unnamed fields alone");
        let trials = store.list_trials(exp).await.unwrap();
        assert_eq!(trials.iter().map(|t| t.id).collect::<Vec<_>>(), vec![t1, t2]);
        let counts = store.trial_counts().await.unwrap();
        assert!(counts.contains(&(exp, "RUNNING".into(), 1)) && counts.contains(&(exp, "QUEUED".into(), 1)), "{counts:?}");

        store
            .create_allocation(NewAllocation {
                id: "a1".into(),
                trial_id: t1,
                token: "secret".into(),
                state: "PENDING".into(),
                agent_id: None,
                slot_ids: vec![],
                created_at: 3,
            })
            .await
            .unwrap();
        store
            .update_allocation("a1", AllocationUpdate { state: Some("RUNNING".into()), agent_id: Some("ag".into()), slot_ids: Some(vec!["cpu0".into(), "cpu1".into()]), ..Default::default() })
            .await
            .unwrap();
        let a = store.get_allocation("a1").await.unwrap();
        assert_eq!((a.state.as_str(), a.agent_id.as_deref(), a.slot_ids.clone()), ("RUNNING", Some("ag"), vec!["cpu0".to_string(), "cpu1".to_string()]));
        assert_eq!(store.live_allocations().await.unwrap().len(), 1);
        store
            .update_allocation("a1", AllocationUpdate { state: Some("TERMINATED".into()), exit_code: Some(0), ended_at: Some(9), ..Default::default() })
            .await
            .unwrap();
        assert!(store.live_allocations().await.unwrap().is_empty());
        assert_eq!(store.get_allocation("a1").await.unwrap().exit_code, Some(0));
    }

    pub async fn metrics_are_idempotent_and_summarised(store: &dyn Store) {
        let exp = store.create_experiment(experiment("m")).await.unwrap();
        let t = trial(store, exp, 1).await;
        let batch: Vec<MetricRow> = (1..=5)
            .flat_map(|s| [point(MetricGroup::Training, "loss", s, 10.0 - s as f64), point(MetricGroup::Training, "acc", s, s as f64 / 10.0)])
            .collect();
        assert_eq!(store.add_metrics(t, &batch).await.unwrap(), 10);
        // A retried report stores nothing and does not move the summaries.
        assert_eq!(store.add_metrics(t, &batch).await.unwrap(), 0);
        // A batch with one old and one new point stores just the new one.
        let mixed = vec![point(MetricGroup::Training, "loss", 5, 99.0), point(MetricGroup::Training, "loss", 3, 99.0), point(MetricGroup::Training, "loss", 6, 1.5)];
        assert_eq!(store.add_metrics(t, &mixed[1..]).await.unwrap(), 1);
        assert_eq!(store.add_metrics(t, &mixed[..1]).await.unwrap(), 0);
        // The same key twice in one batch is stored, and counted, once.
        let twice = vec![point(MetricGroup::Validation, "loss", 6, 0.25), point(MetricGroup::Validation, "loss", 6, 0.75)];
        assert_eq!(store.add_metrics(t, &twice).await.unwrap(), 1);
        let s = store.metric_summaries(t).await.unwrap();
        let loss = s.iter().find(|s| s.group == "training" && s.name == "loss").unwrap();
        assert_eq!((loss.count, loss.last, loss.last_step, loss.min, loss.max), (6, 1.5, 6, 1.5, 9.0));
        let acc = s.iter().find(|s| s.name == "acc").unwrap();
        assert_eq!((acc.count, acc.last, acc.min, acc.max), (5, 0.5, 0.1, 0.5));
        let all = store.experiment_summaries(exp).await.unwrap();
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all.iter().all(|s| s.trial_id == t));
        let val = store.experiment_metric_summaries(exp, "validation", "loss").await.unwrap();
        assert_eq!(val.len(), 1);
        assert_eq!((val[0].trial_id, val[0].min), (t, 0.25));
        // A point reported late with an older step counts but does not become `last`.
        store.add_metrics(t, &[point(MetricGroup::Training, "acc", 0, 0.0)]).await.unwrap();
        let acc = store.metric_summaries(t).await.unwrap().into_iter().find(|s| s.name == "acc").unwrap();
        assert_eq!((acc.count, acc.last, acc.last_step, acc.min), (6, 0.5, 5, 0.0));
        let series = store.metric_series(t, "training", "loss", 100).await.unwrap();
        assert_eq!(series.total_points, 6);
        assert_eq!(series.points.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(store.metric_series(t, "training", "nothing", 100).await.unwrap().total_points, 0);
    }

    pub async fn long_series_are_reduced_keeping_extremes(store: &dyn Store) {
        let exp = store.create_experiment(experiment("s")).await.unwrap();
        let t = trial(store, exp, 1).await;
        let n = 50_000;
        let mut points: Vec<MetricRow> = (0..n).map(|s| point(MetricGroup::Training, "loss", s, 1.0 + (s % 7) as f64 / 100.0)).collect();
        points[23_456].value = 50.0; // spikes that a chart must still show
        points[40_000].value = -3.0;
        // Reported in several batches, one of them repeated, as trials do.
        for chunk in points.chunks(7_000) {
            store.add_metrics(t, chunk).await.unwrap();
        }
        assert_eq!(store.add_metrics(t, &points[..7_000]).await.unwrap(), 0);
        let series = store.metric_series(t, "training", "loss", 10).await.unwrap();
        assert_eq!(series.total_points, n);
        assert!(series.points.len() <= 2 * 50 && series.points.len() >= 40, "reduced to {} points", series.points.len());
        assert!(series.points.contains(&(23_456, 50.0)) && series.points.contains(&(40_000, -3.0)), "{:?}", series.points);
        assert!(series.points.windows(2).all(|w| w[0].0 < w[1].0), "sorted by step");
        // Every value comes from a stored point.
        assert!(series.points.iter().all(|(s, v)| *v == points[*s as usize].value));
        // A finer request reads a finer level: 49 buckets of 1,024 steps (min and max each).
        let fine = store.metric_series(t, "training", "loss", 500).await.unwrap();
        assert!(fine.points.len() >= 49 && fine.points.len() <= 98, "{}", fine.points.len());
    }

    pub async fn logs_page_in_order(store: &dyn Store) {
        let exp = store.create_experiment(experiment("l")).await.unwrap();
        let t = trial(store, exp, 1).await;
        let lines: Vec<LogRow> = (0..25).map(|i| LogRow { id: 0, ts_ms: i, stream: "stdout".into(), line: format!("line {i} \u{e9}")}).collect();
        store.append_logs(t, "a1", &lines[..10]).await.unwrap();
        store.append_logs(t, "a1", &lines[10..]).await.unwrap();
        let page1 = store.read_logs(t, 0, 10).await.unwrap();
        assert_eq!(page1.len(), 10);
        assert_eq!(page1[0].line, "line 0 \u{e9}");
        let page2 = store.read_logs(t, page1.last().unwrap().id, 100).await.unwrap();
        assert_eq!(page2.len(), 15);
        assert_eq!(page2.last().unwrap().line, "line 24 \u{e9}");
        assert!(store.read_logs(t, page2.last().unwrap().id, 100).await.unwrap().is_empty());
    }

    pub async fn checkpoints_register_once(store: &dyn Store) {
        let exp = store.create_experiment(experiment("c")).await.unwrap();
        let t = trial(store, exp, 1).await;
        let c = CheckpointRow {
            uuid: "u-1".into(),
            trial_id: t,
            experiment_id: exp,
            step: 3,
            size: 12,
            resources_json: "{\"w\":12}".into(),
            metadata_json: "{}".into(),
            created_at: 5,
            pinned: false,
        };
        store.add_checkpoint(c.clone()).await.unwrap();
        assert!(matches!(store.add_checkpoint(c.clone()).await, Err(StoreError::Conflict(_))));
        assert_eq!(store.get_checkpoint("u-1").await.unwrap(), c);
        assert_eq!(store.list_checkpoints(t).await.unwrap(), vec![c]);
    }

    /// Many trials reporting at once (SQLite stores them in shared transactions): every report
    /// gets its own count of new rows, retries store nothing, and summaries add up.
    pub async fn concurrent_reports_are_all_stored_once(store: &dyn Store) {
        let exp = store.create_experiment(experiment("conc")).await.unwrap();
        let mut trials = Vec::new();
        for r in 0..6 {
            trials.push(trial(store, exp, r).await);
        }
        let batch = |from: i64| -> Vec<MetricRow> { (from..from + 500).map(|s| point(MetricGroup::Training, "loss", s, s as f64)).collect() };
        let reports = trials.iter().flat_map(|&t| [(t, batch(0)), (t, batch(500)), (t, batch(250))]);
        let counts = futures_util::future::join_all(reports.map(|(t, points)| async move { (t, store.add_metrics(t, &points).await.unwrap()) })).await;
        for &t in &trials {
            let stored: usize = counts.iter().filter(|(x, _)| *x == t).map(|(_, n)| n).sum();
            assert_eq!(stored, 1000, "trial {t}: 1,500 reported, 1,000 distinct steps");
            let s = &store.metric_summaries(t).await.unwrap()[0];
            assert_eq!((s.count, s.last_step, s.min, s.max), (1000, 999, 0.0, 999.0), "trial {t}");
        }
    }

    pub async fn checkpoints_scores_pins_and_deletes(store: &dyn Store) {
        let exp = store.create_experiment(experiment("g")).await.unwrap();
        let other = store.create_experiment(experiment("h")).await.unwrap();
        let (t1, t2, t3) = (trial(store, exp, 1).await, trial(store, exp, 2).await, trial(store, other, 1).await);
        let ck = |uuid: &str, trial_id: i64, experiment_id: i64, step: i64| CheckpointRow {
            uuid: uuid.into(),
            trial_id,
            experiment_id,
            step,
            size: 1,
            resources_json: "{}".into(),
            metadata_json: "{}".into(),
            created_at: step,
            pinned: false,
        };
        for c in [ck("a2", t1, exp, 2), ck("a5", t1, exp, 5), ck("b1", t2, exp, 1), ck("z", t3, other, 1)] {
            store.add_checkpoint(c).await.unwrap();
        }
        // Validations of `acc` at steps 1, 4 and 6 of trial 1: a checkpoint scores the latest
        // validation at or before its step; trial 2 never validated.
        let v = |step, value| MetricRow { group: MetricGroup::Validation, name: "acc".into(), step, value, ts_ms: step };
        store.add_metrics(t1, &[v(1, 0.5), v(4, 0.7), v(6, 0.9)]).await.unwrap();
        store.add_metrics(t1, &[MetricRow { group: MetricGroup::Training, name: "acc".into(), step: 2, value: 9.0, ts_ms: 2 }]).await.unwrap();
        let mut scores = store.checkpoint_scores(exp, "acc").await.unwrap();
        scores.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(scores, vec![("a2".into(), Some(0.5)), ("a5".into(), Some(0.7)), ("b1".into(), None)]);
        let listed: Vec<String> = store.list_experiment_checkpoints(exp).await.unwrap().into_iter().map(|c| c.uuid).collect();
        assert_eq!(listed, vec!["a2", "a5", "b1"]);
        store.set_checkpoint_pinned("a5", true).await.unwrap();
        assert!(store.get_checkpoint("a5").await.unwrap().pinned);
        assert!(matches!(store.set_checkpoint_pinned("nope", true).await, Err(StoreError::NotFound(_))));
        store.delete_checkpoint("a2").await.unwrap();
        store.delete_checkpoint("a2").await.unwrap();
        assert!(matches!(store.get_checkpoint("a2").await, Err(StoreError::NotFound(_))));
        assert_eq!(store.list_experiment_checkpoints(other).await.unwrap().len(), 1, "other experiments untouched");
        store.update_experiment_config(exp, "{\"b\":2}").await.unwrap();
        assert_eq!(store.get_experiment(exp).await.unwrap().config_json, "{\"b\":2}");
        assert!(matches!(store.update_experiment_config(9999, "{}").await, Err(StoreError::NotFound(_))));
    }

    pub async fn delete_removes_everything(store: &dyn Store) {
        let exp = store.create_experiment(experiment("d")).await.unwrap();
        let keep = store.create_experiment(experiment("keep")).await.unwrap();
        let t = trial(store, exp, 1).await;
        let kt = trial(store, keep, 1).await;
        store.add_metrics(t, &[point(MetricGroup::Training, "loss", 1, 1.0)]).await.unwrap();
        store.add_metrics(kt, &[point(MetricGroup::Training, "loss", 1, 1.0)]).await.unwrap();
        store.append_logs(t, "a", &[LogRow { id: 0, ts_ms: 1, stream: "stdout".into(), line: "x".into() }]).await.unwrap();
        store.delete_experiment(exp).await.unwrap();
        assert!(matches!(store.get_experiment(exp).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.get_trial(t).await, Err(StoreError::NotFound(_))));
        assert!(store.metric_summaries(t).await.unwrap().is_empty());
        assert!(store.read_logs(t, 0, 10).await.unwrap().is_empty());
        assert_eq!(store.metric_summaries(kt).await.unwrap().len(), 1, "other experiments are untouched");
        assert!(matches!(store.delete_experiment(exp).await, Err(StoreError::NotFound(_))));
    }

    fn param(name: &str, version: i64, metadata: &str) -> ParamVersionRow {
        ParamVersionRow {
            name: name.into(),
            version,
            created_at: 1000 + version,
            size: 10 * version,
            sha256: format!("{version:064x}"),
            metadata_json: metadata.into(),
            storage_key: format!("{name}/{version}-k"),
        }
    }

    pub async fn params_versions_are_immutable_and_found_every_way(store: &dyn Store) {
        assert!(matches!(store.latest_param_version("policy").await, Err(StoreError::NotFound(_))));
        assert!(store.list_param_versions("policy").await.unwrap().is_empty());
        // Pushed out of order: `latest` is the highest version, not the newest row.
        for v in [2, 10, 3] {
            store.add_param_version(param("policy", v, &format!("{{\"v\":{v}}}")), &[]).await.unwrap();
        }
        store.add_param_version(param("other", 99, "{}"), &["best".into()]).await.unwrap();
        let again =
            store.add_param_version(ParamVersionRow { storage_key: "fresh".into(), ..param("policy", 3, "{}") }, &["x".into()]).await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        assert!(store.list_param_tags("policy").await.unwrap().is_empty(), "a refused push sets no tag");
        assert_eq!(store.get_param_version("policy", 3).await.unwrap(), param("policy", 3, "{\"v\":3}"), "a refused push changes nothing");
        assert_eq!(store.latest_param_version("policy").await.unwrap().version, 10);
        assert_eq!(store.latest_param_version("other").await.unwrap().version, 99);
        let versions: Vec<i64> = store.list_param_versions("policy").await.unwrap().iter().map(|r| r.version).collect();
        assert_eq!(versions, vec![2, 3, 10]);
        assert!(matches!(store.get_param_version("policy", 4).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.param_version_by_tag("other", "best").await.unwrap().version, 99);
        assert!(matches!(store.param_version_by_tag("policy", "best").await, Err(StoreError::NotFound(_))));
        // A storage key belongs to one version only.
        let shared = store.add_param_version(ParamVersionRow { storage_key: "policy/2-k".into(), ..param("policy", 11, "{}") }, &[]).await;
        assert!(matches!(shared, Err(StoreError::Conflict(_))), "{shared:?}");
    }

    pub async fn params_tags_move_and_follow_deletes(store: &dyn Store) {
        for v in 1..=4 {
            let tags: Vec<String> = if v == 1 { vec!["first".into(), "best".into()] } else { vec![] };
            store.add_param_version(param("p", v, "{}"), &tags).await.unwrap();
        }
        let tags = store.list_param_tags("p").await.unwrap();
        assert_eq!(tags.iter().map(|t| (t.tag.as_str(), t.version)).collect::<Vec<_>>(), vec![("best", 1), ("first", 1)]);
        store.set_param_tag("p", "best", 3, 5000).await.unwrap();
        assert_eq!(store.param_version_by_tag("p", "best").await.unwrap().version, 3);
        let best = store.list_param_tags("p").await.unwrap().into_iter().find(|t| t.tag == "best").unwrap();
        assert_eq!((best.version, best.updated_at), (3, 5000));
        assert!(matches!(store.set_param_tag("p", "best", 42, 1).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.param_version_by_tag("p", "best").await.unwrap().version, 3, "a refused move leaves the tag");
        store.delete_param_tag("p", "first").await.unwrap();
        assert!(matches!(store.delete_param_tag("p", "first").await, Err(StoreError::NotFound(_))));
        // Deleting versions takes their tags along; versions already gone are skipped.
        assert_eq!(store.delete_param_versions("p", &[3, 4, 77]).await.unwrap(), 2);
        assert!(store.list_param_tags("p").await.unwrap().is_empty());
        assert_eq!(store.list_param_versions("p").await.unwrap().iter().map(|r| r.version).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(store.latest_param_version("p").await.unwrap().version, 2);
        assert_eq!(store.delete_param_versions("p", &[]).await.unwrap(), 0);
        // The version number can be pushed again once it is gone (a new row, a new key).
        store.add_param_version(ParamVersionRow { storage_key: "p/4-new".into(), ..param("p", 4, "{}") }, &[]).await.unwrap();
    }

    pub async fn params_metadata_updates_and_names_list(store: &dyn Store) {
        assert!(store.list_param_names().await.unwrap().is_empty());
        store.add_param_version(param("b", 1, "{\"elo\":1000}"), &[]).await.unwrap();
        store.add_param_version(param("b", 7, "{}"), &[]).await.unwrap();
        store.add_param_version(param("a", 2, "{}"), &[]).await.unwrap();
        store.update_param_metadata("b", 1, "{\"elo\":1200,\"note\":\"\u{e9}\"}").await.unwrap();
        assert_eq!(store.get_param_version("b", 1).await.unwrap().metadata_json, "{\"elo\":1200,\"note\":\"\u{e9}\"}");
        assert!(matches!(store.update_param_metadata("b", 2, "{}").await, Err(StoreError::NotFound(_))));
        let names = store.list_param_names().await.unwrap();
        assert_eq!(
            names,
            vec![
                ParamNameRow { name: "a".into(), versions: 1, latest_version: 2, updated_at: 1002 },
                ParamNameRow { name: "b".into(), versions: 2, latest_version: 7, updated_at: 1007 },
            ]
        );
    }

    pub async fn reopening_keeps_data(store: &dyn Store) {
        // Running migrations again on a migrated database must be a no-op; the suite's store was
        // opened (and migrated) already, so create data and check a second open sees it.
        let exp = store.create_experiment(experiment("r")).await.unwrap();
        assert!(store.get_experiment(exp).await.is_ok());
    }
}

#[tokio::test]
async fn sqlite_file_survives_reopen_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let store = SqlStore::open(&url).await.unwrap();
    let id = store.create_experiment(checks_experiment()).await.unwrap();
    store.close().await;
    let again = SqlStore::open(&url).await.unwrap();
    assert_eq!(again.get_experiment(id).await.unwrap().name, "persist");
    assert!(dir.path().join("x.db-wal").exists() || again.journal_mode().await.unwrap() == "wal");
}

#[tokio::test]
async fn bad_urls_are_refused_clearly() {
    let err = SqlStore::open("mysql://x").await.err().unwrap();
    assert!(err.to_string().contains("unsupported database URL"), "{err}");
}

fn checks_experiment() -> NewExperiment {
    NewExperiment {
        name: "persist".into(),
        description: None,
        state: "ACTIVE".into(),
        config_json: "{}".into(),
        config_yaml: String::new(),
        context: None,
        created_at: 1,
    }
}
