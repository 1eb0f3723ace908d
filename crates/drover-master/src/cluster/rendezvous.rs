//! The rendezvous of a gang: each member announces the address it listens on and learns every
//! other member's, through the master, so that no member has to start first or guess ports.

use std::time::Duration;

use drover_api::rest::{MAX_RENDEZVOUS_ADDRESS, Rendezvous};

use super::*;

impl Master {
    /// Records the address of the member holding `token` and waits up to `wait` for the rest
    /// of its gang. A member may announce again (a new port after a retry); the latest counts.
    pub async fn rendezvous(&self, token: Option<&str>, address: String, wait: Duration) -> Result<Rendezvous> {
        let token = token.ok_or_else(|| Error::unauthorized("the rendezvous needs the task's token (Authorization: Bearer ...)"))?;
        let auth = self.auth.read().unwrap().get(token).cloned().ok_or_else(|| Error::unauthorized("unknown or expired task token"))?;
        if address.is_empty() || address.len() > MAX_RENDEZVOUS_ADDRESS || address.chars().any(char::is_control) {
            return Err(Error::bad_field("address", format!("1 to {MAX_RENDEZVOUS_ADDRESS} bytes without control characters")));
        }
        let task = auth.allocation_id;
        let mut changes = {
            let mut inner = self.inner.lock().await;
            let (alloc, rank) = member_of(&mut inner, &task)?;
            alloc.rendezvous[rank] = Some(address);
            alloc.rendezvous_watch.send_modify(|v| *v += 1);
            alloc.rendezvous_watch.subscribe()
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let mut inner = self.inner.lock().await;
                let (alloc, rank) = member_of(&mut inner, &task)?;
                let complete = alloc.rendezvous.iter().all(Option::is_some);
                if complete || tokio::time::Instant::now() >= deadline {
                    return Ok(Rendezvous { rank, world_size: alloc.members.len(), addresses: alloc.rendezvous.clone(), complete });
                }
            }
            // A closed channel means the allocation is gone: the next look says so.
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }
}

fn member_of<'a>(inner: &'a mut Inner, task: &str) -> Result<(&'a mut LiveAllocation, usize)> {
    let gone = || Error::conflict("the allocation has ended");
    let gang = inner.tasks.get(task).cloned().ok_or_else(gone)?;
    let alloc = inner.allocations.get_mut(&gang).ok_or_else(gone)?;
    let rank = alloc.members.iter().position(|m| m.task_id == task).ok_or_else(gone)?;
    Ok((alloc, rank))
}
