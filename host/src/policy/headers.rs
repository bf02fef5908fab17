//! The `request-headers` import: the guest reads the headers of the request being
//! decided on demand, through a `headers` resource the host creates for each call.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::bindings::egress::policy::request_headers::{Host, HostHeaders};
use super::engine::StoreData;

/// The host side of a `headers` resource: the request's headers as (lower-case
/// name, value), shared with the request rather than copied.
#[derive(Debug, Clone)]
pub struct RequestHeaders(pub Arc<[(String, String)]>);

impl Host for StoreData {}

impl HostHeaders for StoreData {
    fn get(&mut self, headers: Resource<RequestHeaders>, name: String) -> Vec<String> {
        let Ok(headers) = self.table.get(&headers) else {
            return Vec::new();
        };
        headers
            .0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn entries(&mut self, headers: Resource<RequestHeaders>) -> Vec<(String, String)> {
        match self.table.get(&headers) {
            Ok(headers) => headers.0.to_vec(),
            Err(_) => Vec::new(),
        }
    }

    fn drop(&mut self, headers: Resource<RequestHeaders>) -> wasmtime::Result<()> {
        self.table.delete(headers)?;
        Ok(())
    }
}
