//! Agent sessions as the control plane sees them: hello (who may hold an id), disconnects,
//! task messages (only from the agent that holds the allocation), housekeeping of agents gone
//! too long, and the views of agents and their slots.

use super::*;

impl Master {
    /// An agent said hello. Returns the connection number that later calls must quote, so a
    /// replaced connection's late messages are recognised as stale.
    ///
    /// An id that is connected can only be taken again by the same agent process (the same
    /// `instance`, reconnecting after a broken connection); anyone else claiming it is refused,
    /// so a second agent cannot end the running trials of the first by saying hello.
    pub async fn agent_connected(&self, agent_id: &str, hello: AgentHello, sender: mpsc::UnboundedSender<MasterMessage>) -> Result<u64> {
        let AgentHello { hostname, version, slots, running, instance, pool } = hello;
        let mut inner = self.inner.lock().await;
        if let Some(live) = inner.agents.get(agent_id)
            && live.sender.as_ref().is_some_and(|s| !s.is_closed())
            && live.instance != instance
        {
            return Err(Error::conflict(format!(
                "agent id `{agent_id}` is in use by a connected agent on {}; give this agent another --id",
                live.hostname
            )));
        }
        // The scheduler checks the slots first: a refusal (an unknown pool, a slot dropped from
        // under running work) leaves everything as it was.
        let sched_agent = drover_sched::Agent {
            id: agent_id.to_string(),
            pool: pool.clone(),
            slots: slots.iter().map(|s| drover_sched::Slot { id: s.id.clone(), kind: placement::slot_kind(&s.kind) }).collect(),
        };
        let joined = if inner.sched.has_agent(agent_id) {
            inner.sched.agent_changed(sched_agent).and_then(|()| inner.sched.set_schedulable(agent_id, true))
        } else {
            inner.sched.agent_joined(sched_agent)
        };
        if let Err(e) = joined {
            return Err(match e {
                drover_sched::AgentError::SlotInUse(_) | drover_sched::AgentError::PoolChangeUnderWork { .. } => {
                    Error::conflict(format!("agent `{agent_id}`: {e}"))
                }
                e => Error::bad_request(format!("agent `{agent_id}`: {e}")),
            });
        }
        inner.next_connection += 1;
        let connection = inner.next_connection;
        let now = now_ms();
        inner.agents.insert(
            agent_id.to_string(),
            AgentEntry {
                instance,
                hostname,
                version,
                pool,
                slots,
                sender: Some(sender),
                connection,
                connected_at: now,
                last_heartbeat: now,
                disconnected_at: None,
            },
        );
        // Reattach what still runs; what the agent no longer has is lost.
        let mine: Vec<String> = inner
            .allocations
            .values()
            .flat_map(|a| a.members.iter())
            .filter(|m| m.exit.is_none() && m.agent_id.as_deref() == Some(agent_id))
            .map(|m| m.task_id.clone())
            .collect();
        for task in mine {
            if running.contains(&task) {
                let gang = inner.tasks[&task].clone();
                if let Some(m) = inner.allocations.get_mut(&gang).and_then(|a| a.member_mut(&task)) {
                    m.reattach_deadline = None;
                }
            } else {
                self.member_exited(&mut inner, &task, None, Some("the task was gone when its agent reconnected".into())).await?;
            }
        }
        // The pool's shape may have changed: waiting trials that span agents are split anew.
        self.reshape_waiting(&mut inner);
        for id in running.iter().filter(|id| !inner.tasks.contains_key(*id)) {
            // Fenced off: the master no longer knows this allocation (it ended or was replaced).
            if let Some(sender) = inner.agents[agent_id].sender.as_ref() {
                let _ = sender.send(MasterMessage::KillTask { allocation_id: id.clone(), grace_ms: 0 });
            }
        }
        self.schedule(&mut inner).await?;
        self.bump();
        Ok(connection)
    }

    pub async fn agent_disconnected(&self, agent_id: &str, connection: u64) {
        let mut inner = self.inner.lock().await;
        if let Some(agent) = inner.agents.get_mut(agent_id)
            && agent.connection == connection
        {
            agent.sender = None;
            agent.disconnected_at = Some(Instant::now());
            // It keeps its work while it may come back, but gets no new work.
            let _ = inner.sched.set_schedulable(agent_id, false);
        }
        self.bump();
    }

    pub async fn agent_message(&self, agent_id: &str, connection: u64, message: AgentMessage) -> Result<()> {
        if let AgentMessage::TaskLogs { allocation_id, lines } = &message {
            // Logs skip the control-plane lock; the allocation is checked against the token map,
            // and only the agent holding it may write its log.
            let trial_id = self
                .auth
                .read()
                .unwrap()
                .values()
                .find(|a| &a.allocation_id == allocation_id && a.agent_id.as_deref() == Some(agent_id))
                .map(|a| a.trial_id);
            if trial_id.is_none() {
                tracing::warn!(agent = agent_id, allocation = %allocation_id, "dropped log lines for an allocation this agent does not hold");
            }
            if let Some(trial_id) = trial_id {
                let rows: Vec<LogRow> =
                    lines.iter().map(|l| LogRow { id: 0, ts_ms: l.ts_ms, stream: l.stream.clone(), line: l.line.clone() }).collect();
                self.store.append_logs(trial_id, allocation_id, &rows).await?;
                self.counters.log_lines.fetch_add(rows.len() as u64, Ordering::Relaxed);
                self.bump();
            }
            return Ok(());
        }
        let mut inner = self.inner.lock().await;
        match inner.agents.get_mut(agent_id) {
            Some(agent) if agent.connection == connection => agent.last_heartbeat = now_ms(),
            _ => return Ok(()),
        }
        let owned = |inner: &Inner, task: &str| {
            inner
                .tasks
                .get(task)
                .and_then(|gang| inner.allocations.get(gang))
                .and_then(|a| a.member(task))
                .is_some_and(|m| m.agent_id.as_deref() == Some(agent_id))
        };
        match message {
            AgentMessage::TaskStarted { allocation_id, .. } => {
                if owned(&inner, &allocation_id) {
                    let gang = inner.tasks[&allocation_id].clone();
                    let member = inner.allocations.get_mut(&gang).and_then(|a| a.member_mut(&allocation_id)).expect("owned");
                    if member.state == AllocationState::Assigned {
                        member.state = AllocationState::Running;
                        self.store
                            .update_allocation(&allocation_id, AllocationUpdate { state: Some("RUNNING".into()), ..Default::default() })
                            .await?;
                    }
                }
            }
            AgentMessage::TaskExited { allocation_id, exit_code, signal, error } => {
                if owned(&inner, &allocation_id) {
                    let error = error.or_else(|| signal.map(|s| format!("killed by signal {s}")));
                    self.member_exited(&mut inner, &allocation_id, exit_code, error).await?;
                    self.schedule(&mut inner).await?;
                }
            }
            AgentMessage::Heartbeat | AgentMessage::Hello { .. } | AgentMessage::TaskLogs { .. } => {}
        }
        Ok(())
    }

    /// Periodic housekeeping: tasks of agents gone too long, and reattachments that never came.
    pub async fn tick(&self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let now = Instant::now();
        let wait = self.config.agent_reconnect_wait;
        let lost_agents: Vec<String> = inner
            .agents
            .iter()
            .filter(|(_, a)| a.disconnected_at.is_some_and(|t| now.duration_since(t) > wait))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost_agents {
            // Its allocations are found below by their members; the scheduler drops its slots.
            let _ = inner.sched.agent_left(id);
        }
        let lost: Vec<String> = inner
            .allocations
            .iter()
            .filter(|(_, a)| {
                a.members.iter().any(|m| {
                    m.exit.is_none()
                        && (m.reattach_deadline.is_some_and(|d| now > d) || m.agent_id.as_ref().is_some_and(|id| lost_agents.contains(id)))
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            // The members still running elsewhere cannot go on without the lost one.
            self.send_kill(&mut inner, &id, 0);
            self.allocation_ended(&mut inner, &id, Some("lost contact with the task's agent".into())).await?;
        }
        for id in lost_agents {
            inner.agents.remove(&id);
        }
        self.schedule(&mut inner).await?;
        Ok(())
    }

    pub async fn agents(&self) -> Vec<drover_api::rest::Agent> {
        let inner = self.inner.lock().await;
        // (agent, slot) to the tasks holding it (several share a GPU).
        let mut used: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
        for m in inner.allocations.values().flat_map(|a| a.members.iter()).filter(|m| m.exit.is_none()) {
            for slot in &m.slot_ids {
                used.entry((m.agent_id.as_deref().unwrap_or_default(), slot.as_str())).or_default().push(&m.task_id);
            }
        }
        inner
            .agents
            .iter()
            .map(|(id, a)| drover_api::rest::Agent {
                id: id.clone(),
                pool: a.pool.clone(),
                hostname: a.hostname.clone(),
                version: a.version.clone(),
                connected: a.sender.is_some(),
                connected_at: a.connected_at,
                last_heartbeat: a.last_heartbeat,
                slots: a
                    .slots
                    .iter()
                    .map(|s| drover_api::rest::Slot {
                        id: s.id.clone(),
                        kind: match s.kind {
                            drover_api::agent::SlotKind::Cpu => "cpu".into(),
                            drover_api::agent::SlotKind::Cuda => "cuda".into(),
                        },
                        device: s.device.clone(),
                        allocation_id: used.get(&(id.as_str(), s.id.as_str())).and_then(|t| t.first()).map(|t| t.to_string()),
                        allocation_ids: used
                            .get(&(id.as_str(), s.id.as_str()))
                            .map(|t| t.iter().map(|t| t.to_string()).collect())
                            .unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Trial id to (allocation, agent) of every live allocation.
    pub async fn live_placements(&self) -> HashMap<i64, (String, Option<String>)> {
        let inner = self.inner.lock().await;
        inner.allocations.iter().map(|(id, a)| (a.trial_id, (id.clone(), a.members.first().and_then(|m| m.agent_id.clone())))).collect()
    }

    /// (total slots, used slots, agents connected, trials queued) for `/metrics`.
    pub async fn gauges(&self) -> (usize, usize, usize, usize) {
        let inner = self.inner.lock().await;
        let connected = inner.agents.iter().filter(|(_, a)| a.sender.is_some());
        let (total, used, n) = connected.fold((0, 0, 0), |acc, (id, a)| {
            let busy = inner.sched.slot_usage(id).map_or(0, |u| u.iter().filter(|&&u| u > 0).count());
            (acc.0 + a.slots.len(), acc.1 + busy, acc.2 + 1)
        });
        (total, used, n, inner.sched.pending().count())
    }
}
