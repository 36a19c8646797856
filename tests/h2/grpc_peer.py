"""The gRPC peers of the tests (grpcio, stubs compiled from shop.proto at test time).

``python grpc_peer.py GEN_DIR server PORT [TAG]``: serves Shop on 127.0.0.1:PORT (h2c);
``python grpc_peer.py GEN_DIR client PORT``: makes the calls (several at once on one
channel, one with gzip) and prints ``method status`` per call.
"""

from __future__ import annotations

import sys
from concurrent import futures

sys.path.insert(0, sys.argv[1])

import grpc
import shop_pb2
import shop_pb2_grpc


class Shop(shop_pb2_grpc.ShopServicer):
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def GetItem(self, request, context):
        if request.id == 404:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no item {request.id}")
        price = 9.5 if self.tag != "v2" else 10.5
        return shop_pb2.Item(id=request.id, name=f"item {request.id}", price=price,
                             tags=["a", "b"], cost=shop_pb2.Money(currency="EUR", cents=950),
                             in_stock=True)

    def ListItems(self, request, context):
        context.set_compression(grpc.Compression.Gzip)
        for i in range(request.count):
            yield shop_pb2.Item(id=i, name="listed " * 20, price=float(i))

    def Fail(self, request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request: 100%")


def serve(port: int, tag: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    shop_pb2_grpc.add_ShopServicer_to_server(Shop(tag), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


CALLS = [("GetItem", 1), ("GetItem", 2), ("GetItem", 404), ("ListItems", 3), ("Fail", 7),
         ("GetItem", 5)]


def client(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = shop_pb2_grpc.ShopStub(ch)
        pending = []
        for method, arg in CALLS:
            if method == "ListItems":
                pending.append((method, stub.ListItems(shop_pb2.ListRequest(count=arg))))
            elif method == "GetItem" and arg == 5:
                pending.append((method, stub.GetItem.future(
                    shop_pb2.ItemRequest(id=arg, name="zipped"),
                    compression=grpc.Compression.Gzip)))
            else:
                pending.append((method, getattr(stub, method).future(
                    shop_pb2.ItemRequest(id=arg, name=f"n{arg}"))))
        for method, call in pending:
            try:
                if method == "ListItems":
                    list(call)
                else:
                    call.result()
                code = 0
            except grpc.RpcError as e:
                code = e.code().value[0]
            print(method, code, flush=True)


if __name__ == "__main__":
    mode, port = sys.argv[2], int(sys.argv[3])
    if mode == "server":
        serve(port, sys.argv[4] if len(sys.argv) > 4 else "v1")
    else:
        client(port)
