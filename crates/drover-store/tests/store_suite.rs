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
    Some(SqlStore::open(&postgres_url(test).await?).await.unwrap())
}

/// The URL of a fresh private schema of the test database, or `None` (with a notice) when unset.
async fn postgres_url(test: &str) -> Option<String> {
    let Ok(base) = std::env::var("DROVER_TEST_POSTGRES_URL") else {
        eprintln!("notice: DROVER_TEST_POSTGRES_URL is unset; skipping the PostgreSQL half of {test}");
        return None;
    };
    let schema = format!("drover_test_{}_{}", test, std::process::id());
    let admin = SqlStore::open(&base).await.expect("PostgreSQL from DROVER_TEST_POSTGRES_URL must be reachable");
    admin.execute_raw(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await.unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
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
    deleting_the_newest_experiment_frees_no_ids,
    deleting_the_newest_trials_experiment_frees_no_ids,
    schema_is_at_the_latest_version,
);

mod checks {
    use drover_store::*;

    pub fn experiment(name: &str) -> NewExperiment {
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

    pub async fn trial(store: &dyn Store, exp: i64, request_id: i64) -> i64 {
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
            store
                .create_trial(NewTrial {
                    experiment_id: exp,
                    request_id: 1,
                    state: "QUEUED".into(),
                    hparams_json: "{}".into(),
                    seed: 1,
                    created_at: 1
                })
                .await,
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
            .update_allocation(
                "a1",
                AllocationUpdate {
                    state: Some("RUNNING".into()),
                    agent_id: Some("ag".into()),
                    slot_ids: Some(vec!["cpu0".into(), "cpu1".into()]),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let a = store.get_allocation("a1").await.unwrap();
        assert_eq!(
            (a.state.as_str(), a.agent_id.as_deref(), a.slot_ids.clone()),
            ("RUNNING", Some("ag"), vec!["cpu0".to_string(), "cpu1".to_string()])
        );
        assert_eq!(store.live_allocations().await.unwrap().len(), 1);
        store
            .update_allocation(
                "a1",
                AllocationUpdate { state: Some("TERMINATED".into()), exit_code: Some(0), ended_at: Some(9), ..Default::default() },
            )
            .await
            .unwrap();
        assert!(store.live_allocations().await.unwrap().is_empty());
        assert_eq!(store.get_allocation("a1").await.unwrap().exit_code, Some(0));
    }

    pub async fn metrics_are_idempotent_and_summarised(store: &dyn Store) {
        let exp = store.create_experiment(experiment("m")).await.unwrap();
        let t = trial(store, exp, 1).await;
        let batch: Vec<MetricRow> = (1..=5)
            .flat_map(|s| {
                [point(MetricGroup::Training, "loss", s, 10.0 - s as f64), point(MetricGroup::Training, "acc", s, s as f64 / 10.0)]
            })
            .collect();
        assert_eq!(store.add_metrics(t, &batch).await.unwrap(), 10);
        // A retried report stores nothing and does not move the summaries.
        assert_eq!(store.add_metrics(t, &batch).await.unwrap(), 0);
        // A batch with one old and one new point stores just the new one.
        let mixed = [
            point(MetricGroup::Training, "loss", 5, 99.0),
            point(MetricGroup::Training, "loss", 3, 99.0),
            point(MetricGroup::Training, "loss", 6, 1.5),
        ];
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
        let lines: Vec<LogRow> =
            (0..25).map(|i| LogRow { id: 0, ts_ms: i, stream: "stdout".into(), line: format!("line {i} \u{e9}") }).collect();
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
        let batch =
            |from: i64| -> Vec<MetricRow> { (from..from + 500).map(|s| point(MetricGroup::Training, "loss", s, s as f64)).collect() };
        let reports = trials.iter().flat_map(|&t| [(t, batch(0)), (t, batch(500)), (t, batch(250))]);
        let counts =
            futures_util::future::join_all(reports.map(|(t, points)| async move { (t, store.add_metrics(t, &points).await.unwrap()) }))
                .await;
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
        store
            .add_metrics(t1, &[MetricRow { group: MetricGroup::Training, name: "acc".into(), step: 2, value: 9.0, ts_ms: 2 }])
            .await
            .unwrap();
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

    /// Experiments 1..3 with two trials each: (experiment ids, trial ids).
    async fn three_experiments(store: &dyn Store) -> (Vec<i64>, Vec<i64>) {
        let (mut experiments, mut trials) = (Vec::new(), Vec::new());
        for e in 1..=3 {
            let exp = store.create_experiment(experiment(&format!("e{e}"))).await.unwrap();
            experiments.push(exp);
            for r in 1..=2 {
                trials.push(trial(store, exp, r).await);
            }
        }
        (experiments, trials)
    }

    pub fn above_all(id: i64, ever: &[i64], what: &str) {
        assert!(ever.iter().all(|&old| id > old), "new {what} id {id} is not above every id handed out before: {ever:?}");
    }

    /// A deleted experiment's id, and its trials' ids, are never handed out again, even when it
    /// was the newest (SQLite's plain `INTEGER PRIMARY KEY` reused them).
    pub async fn deleting_the_newest_experiment_frees_no_ids(store: &dyn Store) {
        let (mut experiments, mut trials) = three_experiments(store).await;
        // Several rounds: delete the newest experiment, then create one with trials.
        for round in 0..3 {
            store.delete_experiment(*experiments.last().unwrap()).await.unwrap();
            let exp = store.create_experiment(experiment(&format!("again{round}"))).await.unwrap();
            above_all(exp, &experiments, "experiment");
            experiments.push(exp);
            for r in 1..=2 {
                let t = trial(store, exp, r).await;
                above_all(t, &trials, "trial");
                trials.push(t);
            }
            assert!(matches!(store.get_trial(trials[trials.len() - 3]).await, Err(StoreError::NotFound(_))), "deleted trials stay gone");
        }
        assert_eq!(store.list_experiments().await.unwrap().len(), 3);
    }

    /// The newest trial belongs to an older experiment; deleting that experiment frees no trial id.
    pub async fn deleting_the_newest_trials_experiment_frees_no_ids(store: &dyn Store) {
        let (mut experiments, mut trials) = three_experiments(store).await;
        let first = experiments[0];
        trials.push(trial(store, first, 3).await);
        store.delete_experiment(first).await.unwrap();
        let t = trial(store, experiments[1], 3).await;
        above_all(t, &trials, "trial");
        trials.push(t);
        let exp = store.create_experiment(experiment("after")).await.unwrap();
        above_all(exp, &experiments, "experiment");
        experiments.push(exp);
        above_all(trial(store, exp, 1).await, &trials, "trial");
        assert!(matches!(store.get_experiment(first).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.list_trials(experiments[1]).await.unwrap().len(), 3, "other experiments keep their trials");
    }

    /// Every migration is recorded, including those with nothing to do on this database
    /// (migration 5 on PostgreSQL).
    pub async fn schema_is_at_the_latest_version(store: &SqlStore) {
        assert_eq!(store.schema_versions().await.unwrap(), vec![1, 2, 3, 4, 5]);
    }

    pub async fn reopening_keeps_data(store: &dyn Store) {
        // Running migrations again on a migrated database must be a no-op; the suite's store was
        // opened (and migrated) already, so create data and check a second open sees it.
        let exp = store.create_experiment(experiment("r")).await.unwrap();
        assert!(store.get_experiment(exp).await.is_ok());
    }
}

/// Upgrading a database that migrations 1–4 made (SQLite's ids were rowids then): every row is
/// kept, and from then on deleted ids stay dead.
mod upgrade {
    use super::checks::{above_all, experiment, trial};
    use drover_store::*;

    /// What a version-4 database held: every id ever handed out, the live ones, and a dump of
    /// everything readable through the store.
    pub struct Old {
        pub experiments_ever: Vec<i64>,
        pub trials_ever: Vec<i64>,
        pub experiments: Vec<i64>,
        pub trials: Vec<i64>,
        pub dump: Vec<String>,
    }

    /// Creates a database at `url` with migrations 1–4 only, with rows in every table (and a
    /// deleted experiment in the middle, so both id sequences have a gap).
    pub async fn build_version_4(url: &str) -> Old {
        let store = SqlStore::open_at_version(url, 4).await.unwrap();
        assert_eq!(store.schema_versions().await.unwrap(), vec![1, 2, 3, 4]);
        let (mut experiments_ever, mut trials_ever) = (Vec::new(), Vec::new());
        for e in 0..4 {
            let exp = store.create_experiment(experiment(&format!("old{e}"))).await.unwrap();
            store.save_searcher_snapshot(exp, &format!("{{\"rng\":{e}}}")).await.unwrap();
            experiments_ever.push(exp);
            for r in 0..3 {
                let t = trial(&store, exp, r).await;
                trials_ever.push(t);
                let alloc = format!("alloc-{t}");
                let new = NewAllocation {
                    id: alloc.clone(),
                    trial_id: t,
                    token: format!("token-{t}"),
                    state: "RUNNING".into(),
                    agent_id: Some("agent".into()),
                    slot_ids: vec!["cpu0".into()],
                    created_at: 7,
                };
                store.create_allocation(new).await.unwrap();
                let loss: Vec<MetricRow> = (0..3000)
                    .map(|s| MetricRow {
                        group: MetricGroup::Training,
                        name: "loss".into(),
                        step: s,
                        value: 1.0 / (1 + s + t) as f64,
                        ts_ms: s,
                    })
                    .collect();
                store.add_metrics(t, &loss).await.unwrap();
                let acc: Vec<MetricRow> = [1000, 2000]
                    .map(|s| MetricRow { group: MetricGroup::Validation, name: "acc".into(), step: s, value: (s + r) as f64, ts_ms: s })
                    .into();
                store.add_metrics(t, &acc).await.unwrap();
                let lines: Vec<LogRow> =
                    (0..5).map(|i| LogRow { id: 0, ts_ms: i, stream: "stdout".into(), line: format!("trial {t} line {i}") }).collect();
                store.append_logs(t, &alloc, &lines).await.unwrap();
                for step in [1000, 2000] {
                    let uuid = format!("ck-{t}-{step}");
                    store
                        .add_checkpoint(CheckpointRow {
                            uuid: uuid.clone(),
                            trial_id: t,
                            experiment_id: exp,
                            step,
                            size: step,
                            resources_json: "{}".into(),
                            metadata_json: "{}".into(),
                            created_at: step,
                            pinned: false,
                        })
                        .await
                        .unwrap();
                    store.update_trial(t, TrialUpdate { latest_checkpoint: Some(uuid), ..Default::default() }).await.unwrap();
                }
                store.set_checkpoint_pinned(&format!("ck-{t}-1000"), true).await.unwrap();
            }
        }
        store.delete_experiment(experiments_ever[1]).await.unwrap();
        let param = |version: i64| ParamVersionRow {
            name: "policy".into(),
            version,
            created_at: version,
            size: version,
            sha256: format!("{version:064x}"),
            metadata_json: "{}".into(),
            storage_key: format!("policy/{version}"),
        };
        store.add_param_version(param(1), &["best".into()]).await.unwrap();
        store.add_param_version(param(2), &[]).await.unwrap();
        let experiments: Vec<i64> = store.list_experiments().await.unwrap().iter().map(|e| e.id).collect();
        let mut trials = Vec::new();
        for &exp in &experiments {
            trials.extend(store.list_trials(exp).await.unwrap().iter().map(|t| t.id));
        }
        assert_eq!((experiments.len(), trials.len()), (3, 9));
        let dump = dump(&store, &experiments, &trials).await;
        store.close().await;
        Old { experiments_ever, trials_ever, experiments, trials, dump }
    }

    /// Everything the store reads back about these experiments and trials, one entry per read.
    pub async fn dump(store: &SqlStore, experiments: &[i64], trials: &[i64]) -> Vec<String> {
        let mut out = vec![format!("{:?}", store.list_experiments().await.unwrap())];
        let mut counts = store.trial_counts().await.unwrap();
        counts.sort();
        out.push(format!("{counts:?}"));
        for &e in experiments {
            out.push(format!("context {e}: {:?}", store.get_context(e).await.unwrap()));
            out.push(format!("snapshot {e}: {:?}", store.load_searcher_snapshot(e).await.unwrap()));
            out.push(format!("trials {e}: {:?}", store.list_trials(e).await.unwrap()));
            out.push(format!("summaries {e}: {:?}", store.experiment_summaries(e).await.unwrap()));
            out.push(format!("checkpoints {e}: {:?}", store.list_experiment_checkpoints(e).await.unwrap()));
            out.push(format!("scores {e}: {:?}", store.checkpoint_scores(e, "acc").await.unwrap()));
        }
        for &t in trials {
            out.push(format!("allocation {t}: {:?}", store.get_allocation(&format!("alloc-{t}")).await.unwrap()));
            out.push(format!("loss {t}: {:?}", store.metric_series(t, "training", "loss", 100).await.unwrap()));
            out.push(format!("acc {t}: {:?}", store.metric_series(t, "validation", "acc", 100).await.unwrap()));
            out.push(format!("logs {t}: {:?}", store.read_logs(t, 0, 1000).await.unwrap()));
        }
        out.push(format!("{:?}", store.list_param_versions("policy").await.unwrap()));
        out.push(format!("{:?}", store.list_param_tags("policy").await.unwrap()));
        out
    }

    /// Opens the old database with this release: it is at the latest version and reads back
    /// exactly as before.
    pub async fn check_rows_kept(url: &str, old: &Old) {
        let store = SqlStore::open(url).await.unwrap();
        assert_eq!(store.schema_versions().await.unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(dump(&store, &old.experiments, &old.trials).await, old.dump);
        store.close().await;
    }

    /// After the upgrade, neither deleting the newest experiment nor reopening hands out an old id.
    pub async fn check_ids_stay_dead(url: &str, old: &Old) {
        let (mut experiments_ever, mut trials_ever) = (old.experiments_ever.clone(), old.trials_ever.clone());
        let store = SqlStore::open(url).await.unwrap();
        store.delete_experiment(*old.experiments.last().unwrap()).await.unwrap();
        let exp = store.create_experiment(experiment("new")).await.unwrap();
        above_all(exp, &experiments_ever, "experiment");
        experiments_ever.push(exp);
        let t = trial(&store, exp, 1).await;
        above_all(t, &trials_ever, "trial");
        trials_ever.push(t);
        store.delete_experiment(exp).await.unwrap();
        store.close().await;
        let store = SqlStore::open(url).await.unwrap();
        let exp = store.create_experiment(experiment("reopened")).await.unwrap();
        above_all(exp, &experiments_ever, "experiment");
        above_all(trial(&store, exp, 1).await, &trials_ever, "trial");
        store.close().await;
    }
}

/// SQLite: migration 5 rebuilds `experiments` and `trials` with AUTOINCREMENT and keeps every
/// row of every table, every column, index and foreign key.
#[tokio::test]
async fn sqlite_upgrade_from_version_4_keeps_every_row_and_ends_id_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let old = upgrade::build_version_4(&url).await;
    let (counts, schema) = (raw::table_counts(&url).await, raw::schema(&url).await);
    assert!(counts.iter().all(|(_, n)| *n > 0), "every table has rows before the upgrade: {counts:?}");
    for line in [
        "trials: experiments experiment_id id NO ACTION CASCADE",
        "trials: sqlite_autoindex_trials_1 1 u 0 1 request_id",
        "metrics: trials trial_id id NO ACTION CASCADE",
        "checkpoints: checkpoints_trial 0 c 0 1 step",
    ] {
        assert!(schema.iter().any(|l| l == line), "`{line}` in {schema:#?}");
    }
    assert_eq!(raw::autoincrement_tables(&url).await, Vec::<String>::new(), "the hook built an old schema");
    upgrade::check_rows_kept(&url, &old).await;
    assert_eq!(raw::table_counts(&url).await, counts);
    assert_eq!(raw::schema(&url).await, schema, "same columns, indexes and foreign keys everywhere");
    assert_eq!(raw::autoincrement_tables(&url).await, vec!["experiments", "trials"]);
    assert_eq!(raw::foreign_key_violations(&url).await, Vec::<String>::new());
    upgrade::check_ids_stay_dead(&url, &old).await;
    assert_eq!(raw::foreign_key_violations(&url).await, Vec::<String>::new());
}

/// Rows whose parent was already missing (say, an experiment deleted by hand with foreign keys
/// off) do not block the upgrade, and it keeps them: the rebuild only has to add no new ones.
#[tokio::test]
async fn sqlite_upgrade_keeps_rows_whose_parent_was_already_missing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orphans.db").display());
    let old = upgrade::build_version_4(&url).await;
    raw::execute(&url, "PRAGMA foreign_keys = OFF; INSERT INTO metrics VALUES (999999, 'training', 'loss', 1, 1.0, 1)").await;
    let orphans = raw::foreign_key_violations(&url).await;
    assert_eq!(orphans, vec!["Ok(\"metrics\") Ok(None)"]);
    let counts = raw::table_counts(&url).await;
    upgrade::check_rows_kept(&url, &old).await;
    assert_eq!(raw::table_counts(&url).await, counts);
    assert_eq!(raw::foreign_key_violations(&url).await, orphans);
    upgrade::check_ids_stay_dead(&url, &old).await;
}

/// PostgreSQL's identity columns never reused an id: migration 5 only records itself.
#[tokio::test]
async fn postgres_upgrade_from_version_4_keeps_every_row_and_ids_stay_dead() {
    let Some(url) = postgres_url("upgrade_from_version_4").await else { return };
    let old = upgrade::build_version_4(&url).await;
    upgrade::check_rows_kept(&url, &old).await;
    upgrade::check_ids_stay_dead(&url, &old).await;
}

/// A table migration 5 does not know (here: an extra index on `experiments`) stops the upgrade
/// before anything changed; once it is gone, the upgrade goes through.
#[tokio::test]
async fn sqlite_upgrade_refuses_an_unknown_table_shape_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("odd.db").display());
    let old = upgrade::build_version_4(&url).await;
    raw::execute(&url, "CREATE INDEX experiments_by_name ON experiments (name)").await;
    let (counts, schema) = (raw::table_counts(&url).await, raw::schema(&url).await);
    let err = SqlStore::open(&url).await.err().expect("the upgrade must refuse");
    assert!(err.to_string().contains("migration 5") && err.to_string().contains("experiments"), "{err}");
    assert_eq!(raw::table_counts(&url).await, counts);
    assert_eq!(raw::schema(&url).await, schema);
    assert_eq!(raw::autoincrement_tables(&url).await, Vec::<String>::new());
    assert_eq!(SqlStore::open_at_version(&url, 4).await.unwrap().schema_versions().await.unwrap(), vec![1, 2, 3, 4]);
    raw::execute(&url, "DROP INDEX experiments_by_name").await;
    upgrade::check_rows_kept(&url, &old).await;
    upgrade::check_ids_stay_dead(&url, &old).await;
}

/// The connection that ran migration 5 has its foreign keys back on (an in-memory database has
/// only that one connection).
#[tokio::test]
async fn sqlite_foreign_keys_are_on_after_migrating() {
    let store = SqlStore::open("sqlite::memory:").await.unwrap();
    assert_eq!(store.schema_versions().await.unwrap(), vec![1, 2, 3, 4, 5]);
    let orphan =
        NewTrial { experiment_id: 12345, request_id: 1, state: "QUEUED".into(), hparams_json: "{}".into(), seed: 1, created_at: 1 };
    assert!(store.create_trial(orphan).await.is_err(), "a trial of a missing experiment is refused");
}

/// Looks at a SQLite file directly, with no store open on it.
mod raw {
    use sqlx::{AssertSqlSafe, Connection, Row};

    async fn connect(url: &str) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(url).await.unwrap()
    }

    pub async fn execute(url: &str, sql: &'static str) {
        let mut conn = connect(url).await;
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    async fn strings(url: &str, sql: &str) -> Vec<String> {
        let mut conn = connect(url).await;
        let rows = sqlx::query_scalar(AssertSqlSafe(sql.to_string())).fetch_all(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        rows
    }

    async fn tables(url: &str) -> Vec<String> {
        strings(
            url,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('sqlite_sequence', 'schema_migrations') ORDER BY name",
        )
        .await
    }

    /// Rows per table (every table of the store).
    pub async fn table_counts(url: &str) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for table in tables(url).await {
            let mut conn = connect(url).await;
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"))).fetch_one(&mut conn).await.unwrap();
            conn.close().await.unwrap();
            out.push((table, n));
        }
        assert_eq!(out.len(), 10, "{out:?}");
        out
    }

    /// Every table's columns, foreign keys and indexes (with their columns), as pragmas report them.
    pub async fn schema(url: &str) -> Vec<String> {
        let mut out = Vec::new();
        for table in tables(url).await {
            let mut conn = connect(url).await;
            let queries = [
                r#"SELECT name || ' ' || type || ' ' || "notnull" || ' ' || coalesce(dflt_value, '-') || ' ' || pk FROM pragma_table_info($1) ORDER BY cid"#,
                r#"SELECT "table" || ' ' || "from" || ' ' || coalesce("to", '-') || ' ' || on_update || ' ' || on_delete FROM pragma_foreign_key_list($1) ORDER BY id, seq"#,
                r#"SELECT il.name || ' ' || il."unique" || ' ' || il.origin || ' ' || il.partial || ' ' || ii.seqno || ' ' || coalesce(ii.name, '-')
                   FROM pragma_index_list($1) AS il JOIN pragma_index_info(il.name) AS ii ORDER BY il.name, ii.seqno"#,
            ];
            for q in queries {
                let rows: Vec<String> = sqlx::query_scalar(q).bind(&table).fetch_all(&mut conn).await.unwrap();
                out.extend(rows.into_iter().map(|r| format!("{table}: {r}")));
            }
            conn.close().await.unwrap();
        }
        out
    }

    /// Tables created with AUTOINCREMENT.
    pub async fn autoincrement_tables(url: &str) -> Vec<String> {
        strings(url, "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%AUTOINCREMENT%' ORDER BY name").await
    }

    pub async fn foreign_key_violations(url: &str) -> Vec<String> {
        let mut conn = connect(url).await;
        let rows = sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        rows.iter().map(|r| format!("{:?} {:?}", r.try_get::<String, _>(0), r.try_get::<Option<i64>, _>(1))).collect()
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
