//! One configured instance of a policy component, of either contract version: its
//! store and the handles to its exports, and the guest calls made through them.
//!
//! The request's headers (and, for `decide-body`, its body) are lent to the guest as
//! resources for one call and taken back afterwards, so the instance keeps nothing of
//! the request; if they cannot be taken back the call counts as failed.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::Resource;

use super::bindings::{v1, v2};
use super::body::PolicyBody;
use super::convert::{current, legacy};
use super::engine::{RuntimeConfig, StoreData};
use super::headers::RequestHeaders;
use super::module::{PolicyModule, Pre};
use super::validate::Validator;
use super::verdict::{Head, Verdict};
use super::{PolicyError, Request};

/// The exports of an instance, by contract version.
enum Exports {
    V1(v1::Policy),
    V2(v2::Policy),
}

/// What `configure` returned, in the host's terms.
pub(super) struct RawSummary {
    pub(super) rules: u32,
    pub(super) secrets: Vec<String>,
    pub(super) rule_ids: Vec<String>,
}

/// One configured instance.
pub(super) struct Instance {
    store: Store<StoreData>,
    exports: Exports,
}

impl Instance {
    /// Instantiate `module` and call `configure`: the store runs under the configure
    /// deadline and the memory limit. `Ok(Err(msg))` is the policy rejecting the routes.
    pub(super) fn start(
        module: &Arc<PolicyModule>,
        routes: &str,
    ) -> Result<(Self, RawSummary), PolicyError> {
        let shared = &module.shared;
        let start_error = |e: wasmtime::Error| PolicyError::Start {
            origin: module.origin().to_owned(),
            message: if super::is_timeout(&e) {
                format!(
                    "timed out after {:?} (configure timeout)",
                    shared.config.configure_timeout
                )
            } else {
                format!("{e:#}")
            },
        };
        let rejected = |msg: String| PolicyError::Rejected(Validator::text(&msg));
        // Instantiation and `configure` run guest code: the epoch must tick.
        let _call = shared.enter();
        let mut store = shared.new_store(shared.config.configure_timeout);
        let (exports, summary) = match &module.pre {
            Pre::V1(pre) => {
                let policy = pre.instantiate(&mut store).map_err(start_error)?;
                let s = policy
                    .egress_policy_decider()
                    .call_configure(&mut store, routes)
                    .map_err(start_error)?
                    .map_err(rejected)?;
                let summary = RawSummary {
                    rules: s.rules,
                    secrets: s.secrets,
                    rule_ids: Vec::new(),
                };
                (Exports::V1(policy), summary)
            }
            Pre::V2(pre) => {
                let policy = pre.instantiate(&mut store).map_err(start_error)?;
                let s = policy
                    .egress_policy_decider()
                    .call_configure(&mut store, routes)
                    .map_err(start_error)?
                    .map_err(rejected)?;
                let summary = RawSummary {
                    rules: s.rules,
                    secrets: s.secrets,
                    rule_ids: s.rule_ids,
                };
                (Exports::V2(policy), summary)
            }
        };
        super::PolicyStats::bump(&shared.stats.instances_created);
        Ok((Self { store, exports }, summary))
    }

    /// Call `decide` under a fresh deadline.
    pub(super) fn decide(
        &mut self,
        req: &Request,
        timeout: Duration,
        validator: &Validator<'_>,
    ) -> wasmtime::Result<Head<Verdict>> {
        self.store.set_epoch_deadline(RuntimeConfig::ticks(timeout));
        let headers = self
            .store
            .data_mut()
            .table
            .push(RequestHeaders(Arc::clone(&req.headers)))?;
        let borrowed = Resource::new_borrow(headers.rep());
        let result = match &self.exports {
            Exports::V1(policy) => policy
                .egress_policy_decider()
                .call_decide(&mut self.store, legacy::request(req), borrowed)
                .map(|raw| Head::Decided(legacy::verdict(raw, validator))),
            Exports::V2(policy) => policy
                .egress_policy_decider()
                .call_decide(&mut self.store, current::request(req), borrowed)
                .map(|raw| current::verdict(raw, validator)),
        };
        self.store.data_mut().table.delete(headers)?;
        result
    }

    /// Call `decide-body` under a fresh deadline. `need-body` from it is not a
    /// verdict: `Head::NeedBody` is returned for the caller to refuse. A 0.1.0 guest
    /// never asks for a body; if this is called for one, its `decide` answers.
    pub(super) fn decide_body(
        &mut self,
        req: &Request,
        body: &PolicyBody,
        timeout: Duration,
        validator: &Validator<'_>,
    ) -> wasmtime::Result<Head<Verdict>> {
        let policy = match &self.exports {
            Exports::V1(_) => return self.decide(req, timeout, validator),
            Exports::V2(policy) => policy,
        };
        self.store.set_epoch_deadline(RuntimeConfig::ticks(timeout));
        let table = &mut self.store.data_mut().table;
        let headers = table.push(RequestHeaders(Arc::clone(&req.headers)))?;
        let held = table.push(body.clone())?;
        let result = policy.egress_policy_decider().call_decide_body(
            &mut self.store,
            current::request(req),
            Resource::new_borrow(headers.rep()),
            Resource::new_borrow(held.rep()),
        );
        let table = &mut self.store.data_mut().table;
        table.delete(held)?;
        table.delete(headers)?;
        result.map(|raw| current::verdict(raw, validator))
    }
}
