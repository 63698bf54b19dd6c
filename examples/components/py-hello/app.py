"""A wasi:http handler in Python, built with componentize-py: answers every request with
a greeting and the path it was asked for."""

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        body_bytes = f"Hello from Python at {path}\n".encode()
        response = OutgoingResponse(
            Fields.from_list([("content-type", b"text/plain")])
        )
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(body_bytes)
        OutgoingBody.finish(body, None)
