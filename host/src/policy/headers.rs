//! The `request-headers` import: the guest reads the headers of the request being
//! decided on demand, through a `headers` resource the host creates for each call.
//! Both contract versions bind the same host type.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::bindings::{v1, v2};
use super::engine::StoreData;

/// The host side of a `headers` resource: the request's headers as (lower-case
/// name, value), shared with the request rather than copied.
#[derive(Debug, Clone)]
pub struct RequestHeaders(pub Arc<[(String, String)]>);

impl StoreData {
    fn header_values(&self, headers: &Resource<RequestHeaders>, name: &str) -> Vec<String> {
        let Ok(headers) = self.table.get(headers) else {
            return Vec::new();
        };
        headers
            .0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn header_entries(&self, headers: &Resource<RequestHeaders>) -> Vec<(String, String)> {
        match self.table.get(headers) {
            Ok(headers) => headers.0.to_vec(),
            Err(_) => Vec::new(),
        }
    }
}

impl v2::egress::policy::request_headers::Host for StoreData {}

impl v2::egress::policy::request_headers::HostHeaders for StoreData {
    fn get(&mut self, headers: Resource<RequestHeaders>, name: String) -> Vec<String> {
        self.header_values(&headers, &name)
    }

    fn entries(&mut self, headers: Resource<RequestHeaders>) -> Vec<(String, String)> {
        self.header_entries(&headers)
    }

    fn drop(&mut self, headers: Resource<RequestHeaders>) -> wasmtime::Result<()> {
        self.table.delete(headers)?;
        Ok(())
    }
}

impl v1::egress::policy::request_headers::Host for StoreData {}

impl v1::egress::policy::request_headers::HostHeaders for StoreData {
    fn get(&mut self, headers: Resource<RequestHeaders>, name: String) -> Vec<String> {
        self.header_values(&headers, &name)
    }

    fn entries(&mut self, headers: Resource<RequestHeaders>) -> Vec<(String, String)> {
        self.header_entries(&headers)
    }

    fn drop(&mut self, headers: Resource<RequestHeaders>) -> wasmtime::Result<()> {
        self.table.delete(headers)?;
        Ok(())
    }
}
