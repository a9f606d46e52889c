//! Dispatch and results against a real database, SQLite and PostgreSQL: results apply once,
//! failures reach the dependents, transient failures are retried then aborted, restarts and
//! resumption.

mod support;

use std::time::Duration;

use kiln_coordinator::DispatchSettings;
use kiln_db::testing::Backend;
use kiln_proto::{BuildMetric, StepStatus};
use support::{Farm, result, settings};

async fn the_same_result_twice_is_applied_once(backend: Backend) {
    let mut farm = Farm::new(backend, 2).await;
    let leaf = farm.drv("leaf", &[]);
    let (_, ingested) = farm.evaluate(&[("leaf", &leaf)]).await;
    let build = ingested.queued_builds[0];
    let messages = farm.dispatch().await;
    assert_eq!(Farm::names(&messages), ["leaf"]);
    let mut done = result(&messages[0], StepStatus::Succeeded);
    done.metrics.push(BuildMetric {
        name: "size".into(),
        value: 3.0,
        unit: None,
    });
    farm.dispatcher.apply(&done).await.unwrap();
    assert_eq!(farm.build_status(build).await, "succeeded");
    // The duplicate is ignored: one duration sample, one metric row, status unchanged.
    farm.dispatcher.apply(&done).await.unwrap();
    let samples: i64 =
        sqlx::query_scalar("SELECT samples FROM step_durations WHERE drv_name = 'leaf'")
            .fetch_one(farm.db.pool())
            .await
            .unwrap();
    assert_eq!(samples, 1);
    let metrics: i64 = sqlx::query_scalar("SELECT count(*) FROM step_metrics")
        .fetch_one(farm.db.pool())
        .await
        .unwrap();
    assert_eq!(metrics, 1);
    // A conflicting late result of the same attempt changes nothing either.
    farm.dispatcher
        .apply(&result(&messages[0], StepStatus::Failed))
        .await
        .unwrap();
    assert_eq!(farm.step_state(&leaf).await, ("succeeded".into(), 1));
    assert_eq!(farm.build_status(build).await, "succeeded");
}

async fn dependents_run_only_after_their_dependencies_succeed(backend: Backend) {
    let mut farm = Farm::new(backend, 4).await;
    let a = farm.drv("a", &[]);
    let b = farm.drv("b", &[&a]);
    let c = farm.drv("c", &[&b]);
    farm.evaluate(&[("c", &c)]).await;
    let first = farm.dispatch().await;
    assert_eq!(Farm::names(&first), ["a"]);
    assert!(farm.dispatch().await.is_empty());
    farm.dispatcher
        .apply(&result(&first[0], StepStatus::Succeeded))
        .await
        .unwrap();
    let second = farm.dispatch().await;
    assert_eq!(Farm::names(&second), ["b"]);
    assert!(
        second[0]
            .input_paths
            .contains(&kiln_nix::StoreDir::default().display(&a.out))
    );
}

async fn a_failed_dependency_marks_dependents_dependency_failed(backend: Backend) {
    let mut farm = Farm::new(backend, 4).await;
    let a = farm.drv("a", &[]);
    let b = farm.drv("b", &[&a]);
    let other = farm.drv("other", &[]);
    let (_, ingested) = farm
        .evaluate(&[("a", &a), ("b", &b), ("other", &other)])
        .await;
    let messages = farm.dispatch().await;
    assert_eq!(Farm::names(&messages), ["a", "other"]);
    let a_msg = messages
        .iter()
        .find(|m| m.drv_path.ends_with("-a.drv"))
        .unwrap();
    farm.dispatcher
        .apply(&result(a_msg, StepStatus::Failed))
        .await
        .unwrap();
    let statuses = builds_by_job(&farm, &ingested.queued_builds).await;
    assert_eq!(statuses["a"], "failed");
    assert_eq!(statuses["b"], "dependency-failed");
    assert_eq!(statuses["other"], "running");
    assert_eq!(farm.step_state(&b).await.0, "dependency-failed");
}

async fn failed_with_output_and_timeouts_keep_their_status(backend: Backend) {
    let mut farm = Farm::new(backend, 4).await;
    let x = farm.drv("x", &[]);
    let y = farm.drv("y", &[]);
    let (_, ingested) = farm.evaluate(&[("x", &x), ("y", &y)]).await;
    for m in farm.dispatch().await {
        let status = if m.drv_path.ends_with("-x.drv") {
            StepStatus::FailedWithOutput
        } else {
            StepStatus::TimedOut
        };
        farm.dispatcher.apply(&result(&m, status)).await.unwrap();
    }
    let statuses = builds_by_job(&farm, &ingested.queued_builds).await;
    assert_eq!(statuses["x"], "failed-with-output");
    assert_eq!(statuses["y"], "timed-out");
}

async fn transient_failures_are_retried_then_aborted(backend: Backend) {
    let mut farm = Farm::new(backend, 1).await;
    let flaky = farm.drv("flaky", &[]);
    let (_, ingested) = farm.evaluate(&[("flaky", &flaky)]).await;
    let build = ingested.queued_builds[0];
    // max_retries = 2: attempts 1, 2, 3, then aborted.
    for attempt in 1..=3 {
        let messages = farm.dispatch().await;
        assert_eq!(messages.len(), 1, "attempt {attempt}");
        assert_eq!(messages[0].attempt, attempt);
        farm.dispatcher
            .apply(&result(&messages[0], StepStatus::Transient))
            .await
            .unwrap();
    }
    assert!(farm.dispatch().await.is_empty());
    assert_eq!(farm.step_state(&flaky).await.0, "aborted");
    assert_eq!(farm.build_status(build).await, "aborted");
}

async fn a_failure_is_cached_until_the_build_is_restarted(backend: Backend) {
    let mut farm = Farm::new(backend, 1).await;
    let bad = farm.drv("bad", &[]);
    let (_, first) = farm.evaluate(&[("bad", &bad)]).await;
    let messages = farm.dispatch().await;
    farm.dispatcher
        .apply(&result(&messages[0], StepStatus::Failed))
        .await
        .unwrap();
    // A new evaluation of the same derivation is a cached failure: nothing is dispatched.
    let (_, second) = farm.evaluate(&[("bad", &bad)]).await;
    assert!(second.queued_builds.is_empty());
    assert_eq!(farm.build_status(second.finished_builds[0]).await, "failed");
    assert!(farm.dispatch().await.is_empty());
    // Restarting builds it again, as a new attempt.
    let build = first.queued_builds[0];
    kiln_coordinator::db::builds::request(
        &farm.db,
        build,
        kiln_coordinator::db::builds::Command::Restart,
    )
    .await
    .unwrap();
    farm.dispatcher.run_commands().await.unwrap();
    assert_eq!(farm.build_status(build).await, "queued");
    let again = farm.dispatch().await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    farm.dispatcher
        .apply(&result(&again[0], StepStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(farm.build_status(build).await, "succeeded");
    // Restarting a succeeded build does nothing.
    kiln_coordinator::db::builds::request(
        &farm.db,
        build,
        kiln_coordinator::db::builds::Command::Restart,
    )
    .await
    .unwrap();
    farm.dispatcher.run_commands().await.unwrap();
    assert!(farm.dispatch().await.is_empty());
}

async fn after_a_restart_running_steps_are_dispatched_again_and_old_results_are_stale(
    backend: Backend,
) {
    let mut farm = Farm::new(backend, 1).await;
    let a = farm.drv("a", &[]);
    let b = farm.drv("b", &[&a]);
    let (_, ingested) = farm.evaluate(&[("b", &b)]).await;
    let old = farm.dispatch().await;
    assert_eq!(old[0].attempt, 1);
    farm.restart_dispatcher(1, settings()).await;
    let new = farm.dispatch().await;
    assert_eq!(Farm::names(&new), ["a"]);
    assert_eq!(new[0].attempt, 2);
    // The old attempt's result arrives late: ignored.
    farm.dispatcher
        .apply(&result(&old[0], StepStatus::Failed))
        .await
        .unwrap();
    assert_eq!(farm.step_state(&a).await, ("running".into(), 2));
    farm.dispatcher
        .apply(&result(&new[0], StepStatus::Succeeded))
        .await
        .unwrap();
    let last = farm.dispatch().await;
    assert_eq!(Farm::names(&last), ["b"]);
    farm.dispatcher
        .apply(&result(&last[0], StepStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(
        farm.build_status(ingested.queued_builds[0]).await,
        "succeeded"
    );
}

async fn a_step_no_worker_can_build_ends_unsupported(backend: Backend) {
    let mut farm = Farm::new(backend, 1).await;
    let odd = farm.drv_for("odd", &[], "riscv64-none", &[]);
    let needs_kvm = farm.drv_for("vm-test", &[], support::SYSTEM, &["kvm"]);
    let fine = farm.drv("fine", &[]);
    let (_, ingested) = farm
        .evaluate(&[("odd", &odd), ("vm-test", &needs_kvm), ("fine", &fine)])
        .await;
    let messages = farm.dispatch().await;
    assert_eq!(Farm::names(&messages), ["fine"]);
    farm.dispatcher.check_unsupported().await.unwrap();
    let statuses = builds_by_job(&farm, &ingested.queued_builds).await;
    assert_eq!(statuses["odd"], "unsupported");
    assert_eq!(statuses["vm-test"], "unsupported");
    assert_eq!(statuses["fine"], "running");
}

async fn a_queue_that_just_lost_its_workers_waits_the_whole_delay(backend: Backend) {
    let mut farm = Farm::new(backend, 1).await;
    let delay = Duration::from_millis(1500);
    farm.restart_dispatcher(
        1,
        DispatchSettings {
            unsupported_after: delay,
            ..settings()
        },
    )
    .await;
    let fine = farm.drv("fine", &[]);
    let (_, ingested) = farm.evaluate(&[("fine", &fine)]).await;
    // Runnable for longer than the delay, while a worker serves its queue.
    tokio::time::sleep(delay + Duration::from_millis(200)).await;
    farm.dispatcher.check_unsupported().await.unwrap();
    // The registry forgets every worker for a moment (say, Redis restarted).
    farm.pool.replace([]);
    farm.dispatcher.check_unsupported().await.unwrap();
    let statuses = builds_by_job(&farm, &ingested.queued_builds).await;
    assert_eq!(
        statuses["fine"], "queued",
        "unsupported as soon as its workers vanished"
    );
    // Still no worker after the whole delay: now it is.
    tokio::time::sleep(delay + Duration::from_millis(200)).await;
    farm.dispatcher.check_unsupported().await.unwrap();
    let statuses = builds_by_job(&farm, &ingested.queued_builds).await;
    assert_eq!(statuses["fine"], "unsupported");
}

async fn steps_are_shared_between_builds_and_evaluations(backend: Backend) {
    let mut farm = Farm::new(backend, 4).await;
    let base = farm.drv("base", &[]);
    let left = farm.drv("left", &[&base]);
    let right = farm.drv("right", &[&base]);
    let (_, first) = farm.evaluate(&[("left", &left)]).await;
    let (_, second) = farm.evaluate(&[("right", &right), ("left", &left)]).await;
    let messages = farm.dispatch().await;
    // One step for `base`, although three builds need it.
    assert_eq!(Farm::names(&messages), ["base"]);
    farm.dispatcher
        .apply(&result(&messages[0], StepStatus::Succeeded))
        .await
        .unwrap();
    let messages = farm.dispatch().await;
    assert_eq!(Farm::names(&messages), ["left", "right"]);
    for m in &messages {
        farm.dispatcher
            .apply(&result(m, StepStatus::Succeeded))
            .await
            .unwrap();
    }
    for build in first.queued_builds.iter().chain(&second.queued_builds) {
        assert_eq!(farm.build_status(*build).await, "succeeded");
    }
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM steps")
        .fetch_one(farm.db.pool())
        .await
        .unwrap();
    assert_eq!(steps, 3);
}

async fn the_window_keeps_the_backlog_in_the_coordinator(backend: Backend) {
    let mut farm = Farm::new(backend, 2).await;
    let jobs: Vec<_> = (0..5).map(|i| farm.drv(&format!("j{i}"), &[])).collect();
    let named: Vec<(String, &support::Drv)> = jobs
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("j{i}"), d))
        .collect();
    let refs: Vec<(&str, &support::Drv)> = named.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    farm.evaluate(&refs).await;
    let first = farm.dispatch().await;
    assert_eq!(first.len(), 2);
    assert!(farm.dispatch().await.is_empty());
    farm.dispatcher
        .apply(&result(&first[0], StepStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(farm.dispatch().await.len(), 1);
}

async fn builds_by_job(
    farm: &Farm,
    builds: &[kiln_db::BuildId],
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for build in builds {
        let (job, status): (String, String) =
            sqlx::query_as("SELECT job, status FROM builds WHERE id = $1")
                .bind(build.get())
                .fetch_one(farm.db.pool())
                .await
                .unwrap();
        out.insert(job, status);
    }
    out
}

async fn old_evaluations_are_deleted_only_once_their_builds_finished(backend: Backend) {
    let mut farm = Farm::new(backend, 1).await;
    let one = farm.drv("one", &[]);
    let (first, _) = farm.evaluate(&[("one", &one)]).await;
    let (second, _) = farm.evaluate(&[("one", &one)]).await;
    let (third, _) = farm.evaluate(&[("one", &one)]).await;
    use kiln_coordinator::db::evals;
    // Their (shared) build is still queued: nothing is deleted.
    assert_eq!(evals::prune(&farm.db, farm.jobset, 1).await.unwrap(), 0);
    let messages = farm.dispatch().await;
    farm.dispatcher
        .apply(&result(&messages[0], StepStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(evals::prune(&farm.db, farm.jobset, 1).await.unwrap(), 2);
    assert!(evals::get(&farm.db, first).await.is_err());
    assert!(evals::get(&farm.db, second).await.is_err());
    assert!(evals::get(&farm.db, third).await.is_ok());
    // The step stays: steps are shared and outlive evaluations.
    assert_eq!(farm.step_state(&one).await.0, "succeeded");
    // 0 keeps everything.
    assert_eq!(evals::prune(&farm.db, farm.jobset, 0).await.unwrap(), 0);
}

kiln_db::both_backends!(
    the_same_result_twice_is_applied_once,
    dependents_run_only_after_their_dependencies_succeed,
    a_failed_dependency_marks_dependents_dependency_failed,
    failed_with_output_and_timeouts_keep_their_status,
    transient_failures_are_retried_then_aborted,
    a_failure_is_cached_until_the_build_is_restarted,
    after_a_restart_running_steps_are_dispatched_again_and_old_results_are_stale,
    a_step_no_worker_can_build_ends_unsupported,
    a_queue_that_just_lost_its_workers_waits_the_whole_delay,
    steps_are_shared_between_builds_and_evaluations,
    the_window_keeps_the_backlog_in_the_coordinator,
    old_evaluations_are_deleted_only_once_their_builds_finished,
);
