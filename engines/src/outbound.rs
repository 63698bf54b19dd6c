//! Outbound HTTP for guests, as WAGI guests already call it: the `wasi_experimental_http`
//! import module (`req`, `close`, `header_get`, `headers_get_all`, `body_read`).
//!
//! The engines never do I/O here. `req` checks the call against the service's grant and
//! hands the request out: the task's slice ends with [`crate::Slice::Waiting`], the driver
//! makes the call off the serving thread, and gives the result back with
//! [`crate::GuestTask::deliver`]; the guest continues where it was when its task runs
//! again. Responses stay with the instance, read through handles, and go with it.

use crate::abi::ValKind;
use crate::host::{GuestIo, HostStop};
pub(crate) use crate::http_calls::not_delivered;
pub use crate::http_calls::{
    InFlight, MAX_OPEN_RESPONSES, MAX_REQUEST_BODY, OutboundError, OutboundRequest,
    OutboundResponse, OutboundResult, code, origin_of,
};

/// The import module name.
pub const MODULE: &str = "wasi_experimental_http";

/// Calls `$m!("import", method(arg: i32, ...))` for each function of [`MODULE`] but `req`
/// (which each engine suspends its own way): methods of [`GuestIo`] shaped like the WASI
/// functions, so the engines register both with one macro.
macro_rules! for_each_function {
    ($m:ident) => {
        $m!("close", http_close(handle: i32));
        $m!(
            "header_get",
            http_header_get(handle: i32, name: i32, name_len: i32, buf: i32, buf_len: i32, written: i32)
        );
        $m!("headers_get_all", http_headers_get_all(handle: i32, buf: i32, buf_len: i32, written: i32));
        $m!("header_get_all", http_headers_get_all(handle: i32, buf: i32, buf_len: i32, written: i32));
        $m!("body_read", http_body_read(handle: i32, buf: i32, buf_len: i32, written: i32));
    };
}
#[allow(unused_imports)]
pub(crate) use for_each_function;

impl GuestIo {
    /// `wasi_experimental_http::req`: `None` when the call was set aside and the guest
    /// must wait for it, else the code to return now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn http_req(
        &mut self,
        mem: &[u8],
        url: (i32, i32),
        method: (i32, i32),
        headers: (i32, i32),
        body: (i32, i32),
        out: (i32, i32),
    ) -> Option<i32> {
        let Some(setup) = self.setup.as_deref() else {
            return Some(code::DESTINATION_NOT_ALLOWED);
        };
        self.http
            .begin(mem, setup, url, method, headers, body, out)
            .err()
    }

    /// `close(handle)`.
    pub fn http_close(&mut self, _mem: &mut [u8], handle: i32) -> Result<i32, HostStop> {
        Ok(self.http.close(handle))
    }

    /// `header_get(handle, name, name_len, buf, buf_len, written_out)`.
    #[allow(clippy::too_many_arguments)]
    pub fn http_header_get(
        &mut self,
        mem: &mut [u8],
        handle: i32,
        name: i32,
        name_len: i32,
        buf: i32,
        buf_len: i32,
        written: i32,
    ) -> Result<i32, HostStop> {
        Ok(self
            .http
            .header_get(mem, handle, (name, name_len), (buf, buf_len), written))
    }

    /// `headers_get_all(handle, buf, buf_len, written_out)`.
    pub fn http_headers_get_all(
        &mut self,
        mem: &mut [u8],
        handle: i32,
        buf: i32,
        buf_len: i32,
        written: i32,
    ) -> Result<i32, HostStop> {
        Ok(self
            .http
            .headers_get_all(mem, handle, (buf, buf_len), written))
    }

    /// `body_read(handle, buf, buf_len, written_out)`.
    pub fn http_body_read(
        &mut self,
        mem: &mut [u8],
        handle: i32,
        buf: i32,
        buf_len: i32,
        written: i32,
    ) -> Result<i32, HostStop> {
        Ok(self.http.body_read(mem, handle, (buf, buf_len), written))
    }
}

/// The `(params, results)` of each function, all `i32`. `header_get_all` is the name
/// older guest libraries import `headers_get_all` under.
pub fn signature(name: &str) -> Option<(usize, usize)> {
    match name {
        "req" => Some((10, 1)),
        "close" => Some((1, 1)),
        "header_get" => Some((6, 1)),
        "headers_get_all" | "header_get_all" => Some((4, 1)),
        "body_read" => Some((4, 1)),
        _ => None,
    }
}

/// Checks an import from [`MODULE`] against the functions provided.
pub fn check_import(
    name: &str,
    params: &[Option<ValKind>],
    results: &[Option<ValKind>],
) -> Result<(), String> {
    let Some((p, r)) = signature(name) else {
        return Err(format!("{MODULE}::{name} is not a function of {MODULE}"));
    };
    let all_i32 =
        |l: &[Option<ValKind>], n| l.len() == n && l.iter().all(|k| *k == Some(ValKind::I32));
    if all_i32(params, p) && all_i32(results, r) {
        Ok(())
    } else {
        Err(format!("{MODULE}::{name} has the wrong signature"))
    }
}
