"""The Lambda handler with real API Gateway (HTTP API 2.0, REST 1.0) and Function URL event shapes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from adclick.core.settings import PostbackSettings
from adclick.postback.intake import GIF
from adclick.postback.lambda_handler import LambdaRuntime
from postback_helpers import QUEUE, click_id, conversions, publish_advertiser, tampered, token
from support.servers import RedisServer, SqsServer


def http_api_event(
    method: str = "GET",
    path: str = "/postback",
    query: str = "",
    body: bytes | None = None,
    content_type: str | None = None,
    cookies: list[str] | None = None,
    domain: str = "r3pmxmplak.execute-api.us-east-1.amazonaws.com",
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event; Function URLs send the same shape from another domain."""
    headers = {
        "accept": "*/*",
        "host": domain,
        "user-agent": "AdvertiserPostback/1.0",
        "x-amzn-trace-id": "Root=1-5e6722a7-cc56xmpl46db7ae02d4da47e",
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    if body is not None:
        headers["content-length"] = str(len(body))
    if content_type:
        headers["content-type"] = content_type
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "AdvertiserPostback/1.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "10/Mar/2020:05:16:23 +0000",
            "timeEpoch": 1583817383220,
        },
        "isBase64Encoded": body is not None,
    }
    if query:
        event["queryStringParameters"] = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    if cookies:
        event["cookies"] = cookies
    if body is not None:
        event["body"] = base64.b64encode(body).decode()
    return event


def rest_api_event(
    method: str = "GET", path: str = "/postback", params: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """An API Gateway REST API (payload 1.0) proxy event on stage `prod`."""
    headers = {"Accept": "*/*", "Host": "70ixmpl4fl.execute-api.us-east-2.amazonaws.com", "User-Agent": "curl/8.5.0"}
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": {name: values[-1] for name, values in params.items()} if params else None,
        "multiValueQueryStringParameters": params or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "2gxmpl",
            "resourcePath": path,
            "httpMethod": method,
            "extendedRequestId": "JJbxmplHYosFVYQ=",
            "requestTime": "10/Mar/2020:00:03:59 +0000",
            "path": f"/prod{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": "prod",
            "domainPrefix": "70ixmpl4fl",
            "requestTimeEpoch": 1583798639428,
            "requestId": "77375676-xmpl-4b79-853a-f982474efe18",
            "identity": {"sourceIp": "203.0.113.9", "userAgent": "curl/8.5.0"},
            "domainName": "70ixmpl4fl.execute-api.us-east-2.amazonaws.com",
            "apiId": "70ixmpl4fl",
        },
        "body": None,
        "isBase64Encoded": False,
    }


@pytest.fixture
def runtime(adclick_env: dict[str, str]) -> Iterator[LambdaRuntime]:
    runtime = LambdaRuntime(PostbackSettings(postback_sqs_timeout_seconds=0.5))
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def queue(sqs_server: SqsServer) -> str:
    return sqs_server.create_queue(QUEUE)


def reply(response: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    assert response["isBase64Encoded"] is False
    assert response["headers"]["Content-Type"] == "application/json"
    return response["statusCode"], json.loads(response["body"])


def test_http_api_get_with_query_string_queues_the_conversion(
    runtime: LambdaRuntime, sqs_server: SqsServer, queue: str
) -> None:
    cid = click_id()
    query = urllib.parse.urlencode(
        {"click_id": cid, "txid": "L-1", "amount": "7.25", "currency": "BRL", "token": token(5), "sub": "x"}
    )
    status, body = reply(runtime.handle(http_api_event(query=query), None))
    assert (status, body) == (200, {"status": "accepted", "click_id": cid, "txid": "L-1"})
    [message] = conversions(sqs_server, queue)
    assert {k: message[k] for k in ("click_id", "txid", "amount", "currency", "advertiser_id", "source", "params")} == {
        "click_id": cid,
        "txid": "L-1",
        "amount": "7.25",
        "currency": "BRL",
        "advertiser_id": 5,
        "source": "lambda",
        "params": {"sub": "x"},
    }


def test_http_api_post_with_base64_form_body(runtime: LambdaRuntime, sqs_server: SqsServer, queue: str) -> None:
    cid = click_id()
    form = urllib.parse.urlencode({"click_id": cid, "txid": "L-2", "status": "rejected", "token": token(5)}).encode()
    event = http_api_event("POST", body=form, content_type="application/x-www-form-urlencoded")
    assert reply(runtime.handle(event, None))[0] == 200
    [message] = conversions(sqs_server, queue)
    assert (message["txid"], message["status"], message["source"]) == ("L-2", "rejected", "lambda")


def test_same_refusals_as_the_http_app(runtime: LambdaRuntime, sqs_server: SqsServer, queue: str) -> None:
    cid = click_id()
    good = {"click_id": cid, "token": token(5)}
    cases = [
        (http_api_event(query=urllib.parse.urlencode({**good, "token": "5.1." + "A" * 32})), 401, "invalid_token"),
        (http_api_event(query=urllib.parse.urlencode({**good, "click_id": tampered(cid)})), 400, "invalid_click_id"),
        (http_api_event(query=urllib.parse.urlencode({**good, "txid": "a\r\nb"})), 400, "invalid_txid"),
        (http_api_event(query=urllib.parse.urlencode({**good, "amount": "1e99"})), 400, "invalid_amount"),
        (http_api_event("POST", body=b"x" * (64 * 1024 + 1), content_type="text/plain"), 413, "body_too_large"),
        (http_api_event("POST", body=b"{}", content_type="application/xml"), 415, "unsupported_media_type"),
        (rest_api_event(params={"click_id": [cid]}), 401, "missing_token"),
        (rest_api_event(params={"click_id": [tampered(cid)], "token": [token(5)]}), 400, "invalid_click_id"),
        (rest_api_event(params={"click_id": [cid, "other"], "token": [token(5)]}), 400, "conflicting_field"),
    ]
    broken_base64 = http_api_event("POST", body=b"click_id=x", content_type="application/x-www-form-urlencoded")
    broken_base64["body"] = "not base64!"
    cases.append((broken_base64, 400, "malformed_body"))
    for event, want_status, want_reason in cases:
        status, body = reply(runtime.handle(event, None))
        assert (status, body["reason"]) == (want_status, want_reason), body
    assert sqs_server.count(queue) == 0


def test_revoked_token_is_refused_through_redis(
    runtime: LambdaRuntime, sqs_server: SqsServer, redis_server: RedisServer, queue: str
) -> None:
    publish_advertiser(redis_server, 4)
    query = urllib.parse.urlencode({"click_id": click_id(), "token": token(5, 3)})
    status, body = reply(runtime.handle(http_api_event(query=query), None))
    assert (status, body["reason"]) == (401, "revoked_token")
    assert sqs_server.count(queue) == 0


def test_allowlist_reads_api_gateways_source_ip_not_a_header(
    runtime: LambdaRuntime, sqs_server: SqsServer, redis_server: RedisServer, queue: str
) -> None:
    publish_advertiser(redis_server, 1, postback_ips=["203.0.113.0/24"])
    query = urllib.parse.urlencode({"click_id": click_id(), "txid": "IN", "token": token(5)})
    allowed = reply(runtime.handle(http_api_event(query=query), None))  # sourceIp 203.0.113.9
    forged = http_api_event(query=query.replace("IN", "FORGED"))
    forged["requestContext"]["http"]["sourceIp"] = "198.51.100.1"
    forged["headers"]["x-forwarded-for"] = "203.0.113.9"  # a header the caller chose: not believed
    refused = reply(runtime.handle(forged, None))
    rest = rest_api_event(params={"click_id": [click_id()], "txid": ["REST"], "token": [token(5)]})
    rest_allowed = reply(runtime.handle(rest, None))  # identity.sourceIp 203.0.113.9

    assert (allowed[0], rest_allowed[0]) == (200, 200)
    assert (refused[0], refused[1]["reason"]) == (403, "ip_not_allowed")
    messages = conversions(sqs_server, queue)
    assert sorted((m["txid"], m["ip"]) for m in messages) == [("IN", "203.0.113.9"), ("REST", "203.0.113.9")]


def test_rest_api_get_on_a_stage_queues_the_conversion(
    runtime: LambdaRuntime, sqs_server: SqsServer, queue: str
) -> None:
    cid = click_id()
    # REST events carry decoded values: a "+" and a "%" here are literal.
    event = rest_api_event(params={"click_id": [cid], "txid": ["A+B%20"], "token": [token(8)], "amount": ["1"]})
    status, body = reply(runtime.handle(event, None))
    assert (status, body["txid"]) == (200, "A+B%20")
    [message] = conversions(sqs_server, queue)
    assert (message["txid"], message["advertiser_id"], message["source"]) == ("A+B%20", 8, "lambda")


def test_function_url_pixel_reads_the_cookie_and_always_answers_a_gif(
    runtime: LambdaRuntime, sqs_server: SqsServer, queue: str
) -> None:
    domain = "abcdefghij1234567890klmnop.lambda-url.us-east-1.on.aws"
    cid = click_id()
    valid = http_api_event(
        path="/pixel.gif", query="txid=PX-1&amount=9.99", cookies=["theme=dark", f"adclick_cid={cid}"], domain=domain
    )
    forged = http_api_event(
        path="/pixel.gif", query="txid=PX-2", cookies=[f"adclick_cid={tampered(cid)}"], domain=domain
    )
    for event in (valid, forged):
        response = runtime.handle(event, None)
        assert response["statusCode"] == 200
        assert response["isBase64Encoded"] is True
        assert base64.b64decode(response["body"]) == GIF
        assert response["headers"]["Content-Type"] == "image/gif"
        assert "no-store" in response["headers"]["Cache-Control"]
    [message] = conversions(sqs_server, queue)
    assert (message["click_id"], message["txid"], message["source"], message["advertiser_id"]) == (
        cid,
        "PX-1",
        "pixel",
        None,
    )


def test_health_unknown_path_and_method(runtime: LambdaRuntime) -> None:
    assert reply(runtime.handle(http_api_event(path="/health"), None)) == (200, {"status": "ok"})
    assert reply(runtime.handle(http_api_event(path="/nope"), None))[0] == 404
    assert reply(runtime.handle(http_api_event("DELETE"), None))[0] == 405


def test_sqs_hung_answers_503(runtime: LambdaRuntime, sqs_server: SqsServer, queue: str) -> None:
    query = urllib.parse.urlencode({"click_id": click_id(), "txid": "H-1", "token": token(5)})
    assert reply(runtime.handle(http_api_event(query=query.replace("H-1", "WARM")), None))[0] == 200
    sqs_server.pause()
    try:
        status, body = reply(runtime.handle(http_api_event(query=query), None))
    finally:
        sqs_server.resume()
    assert (status, body["reason"]) == (503, "queue_unavailable")
    # And the container keeps working once SQS is back.
    assert reply(runtime.handle(http_api_event(query=query), None))[0] == 200


HANDLER_SCRIPT = """
import json, sys
from adclick.postback import lambda_handler
events = json.load(sys.stdin)
out = []
for event in events:
    response = lambda_handler.handler(event, None)
    out.append({"response": response, "client": id(lambda_handler._runtime.intake._sqs_client)})
print(json.dumps(out))
"""


def test_handler_entry_point_builds_one_client_per_container(
    adclick_env: dict[str, str], sqs_server: SqsServer, queue: str
) -> None:
    cids = [click_id(), click_id()]
    events = [
        http_api_event(query=urllib.parse.urlencode({"click_id": cid, "txid": f"C-{i}", "token": token(5)}))
        for i, cid in enumerate(cids)
    ]
    env = {**os.environ, **adclick_env}
    done = subprocess.run(
        [sys.executable, "-c", HANDLER_SCRIPT],
        input=json.dumps(events),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, second = json.loads(done.stdout)
    assert first["response"]["statusCode"] == second["response"]["statusCode"] == 200, done.stderr
    assert first["client"] == second["client"]  # the warm invocation reused the cold one's SQS client
    assert sorted(m["txid"] for m in conversions(sqs_server, queue)) == ["C-0", "C-1"]
