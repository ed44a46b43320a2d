#!/usr/bin/env python3
"""An independent gRPC reflection client for Palisade's controller (grpcio + grpcio-reflection).

Lists the services over both reflection protocols (grpc.reflection.v1 and v1alpha), resolves
palisade.v1.Introspection from the server's descriptors alone, builds its messages dynamically
and calls ListNodes, GetNode and ExplainFlow, plus the standard health check: what grpcurl does,
without any Palisade code. Prints one JSON object.

    python3 reflection_client.py --addr 127.0.0.1:7443 --ca ca.pem --cert operator.pem --key operator-key.pem
    python3 reflection_client.py --addr 127.0.0.1:7443 --insecure
"""

import argparse
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def channel(args):
    if args.insecure:
        return grpc.insecure_channel(args.addr)
    with open(args.ca, "rb") as ca, open(args.cert, "rb") as cert, open(args.key, "rb") as key:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.read(), private_key=key.read(), certificate_chain=cert.read()
        )
    return grpc.secure_channel(args.addr, creds)


def list_services(ch, version):
    """Service names over grpc.reflection.<version> (v1 and v1alpha share their wire format)."""
    call = ch.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    return sorted(s.name for r in responses for s in r.list_services_response.service)


def caller(ch, pool, service, method):
    m = pool.FindServiceByName(service).FindMethodByName(method)
    request = message_factory.GetMessageClass(m.input_type)
    response = message_factory.GetMessageClass(m.output_type)
    call = ch.unary_unary(
        f"/{service}/{method}",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )
    return request, call


def as_dict(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", required=True)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--node", help="node for GetNode")
    p.add_argument("--flow", nargs=3, metavar=("SOURCE", "DESTINATION", "PORT"), help="flow for ExplainFlow")
    p.add_argument("--pod", help="NAMESPACE/NAME of a pod for GetObjects")
    args = p.parse_args()
    if not args.insecure and not (args.ca and args.cert and args.key):
        p.error("--ca, --cert and --key are required unless --insecure")

    ch = channel(args)
    out = {
        "services_v1": list_services(ch, "v1"),
        "services_v1alpha": list_services(ch, "v1alpha"),
    }
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
    introspection = pool.FindServiceByName("palisade.v1.Introspection")
    out["introspection_methods"] = [m.name for m in introspection.methods]

    request, call = caller(ch, pool, "palisade.v1.Introspection", "ListNodes")
    out["list_nodes"] = as_dict(call(request(), timeout=10))
    if args.node:
        request, call = caller(ch, pool, "palisade.v1.Introspection", "GetNode")
        out["get_node"] = as_dict(call(request(node=args.node, include_slice=True), timeout=10))
    if args.flow:
        request, call = caller(ch, pool, "palisade.v1.Introspection", "ExplainFlow")
        src, dst, port = args.flow
        req = request(source=src, destination=dst, port=int(port), protocol=6)
        out["explain"] = as_dict(call(req, timeout=10))
    if args.pod:
        request, call = caller(ch, pool, "palisade.v1.Introspection", "GetObjects")
        key = pool.FindMessageTypeByName("palisade.v1.ObjectKey")
        req = request(objects=[message_factory.GetMessageClass(key)(kind="Pod", name=args.pod)])
        out["get_objects"] = as_dict(call(req, timeout=10))
    request, call = caller(ch, pool, "grpc.health.v1.Health", "Check")
    out["health"] = as_dict(call(request(service="palisade.v1.Sync"), timeout=10))
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
