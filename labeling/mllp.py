"""The HL7 v2 MLLP listener: ORU^R01 reports in, one ACK out for each (python-hl7's asyncio
MLLP streams, in a thread of their own).

Each message is answered AA once its report is stored (or was already), AR when it cannot be
read or is not an ORU^R01, AE when a required field or the text is missing or the catalog
failed; MSA-3 and ERR-8 say why, in words (never a value from the message, nor the name of
an exception). A bad message never closes the listener, nor (unless the framing itself is
broken beyond repair) the connection. Every message gets exactly one answer: one larger than
``labeling.mllp_max_message_bytes`` is read to its end without being kept, then refused
once. Logs name the peer and the message control ID, never a value from the message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address

from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

from labeling.intake import ReportIntake, ReportRejectedError, ReportStoreError
from labeling.oru import Header, MessageError, ack, decode, parse_oru, read_header

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"


class _TooLargeError(Exception):
    """A message longer than the limit; it was read to its end and dropped."""


class _NotABlockError(Exception):
    """Data ended by <FS><CR> that did not start with <VT>."""


class MllpServer:
    """Listens on ``host:port`` and hands every message to ``intake`` (in worker threads).

    With ``allowed_sources``, connections from any other address are closed unanswered.
    """

    def __init__(
        self,
        intake: ReportIntake,
        host: str,
        port: int,
        *,
        allowed_sources: Sequence[IPv4Network | IPv6Network] = (),
        max_message_bytes: int = 4 * 1024 * 1024,
        workers: int = 4,
    ) -> None:
        self.intake = intake
        self.host = host
        self.requested_port = port
        self.allowed_sources = tuple(allowed_sources)
        self.max_message_bytes = max_message_bytes
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mllp")
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="mllp", daemon=True)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self.requested_port
        return int(self._server.sockets[0].getsockname()[1])

    def start(self) -> None:
        """Bind and start serving; raises ``OSError`` if the port cannot be bound."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_hl7_server(
                self._client, self.host, self.requested_port, limit=self.max_message_bytes
            ),
            self._loop,
        )
        self._server = future.result(timeout=30)
        log.info("MLLP (HL7 v2) listening on %s:%s", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                await server.wait_closed()

            try:
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            except Exception:
                log.exception("MLLP listener did not close cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _client(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        address, port = (writer.get_extra_info("peername") or ("?", "?"))[:2]
        peer = f"{address}:{port}"
        if not self._allowed(str(address)):
            log.warning("MLLP connection from %s refused: not in mllp_allowed_sources", peer)
            writer.close()
            return
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    block = await self._read_block(reader)
                except asyncio.IncompleteReadError:
                    return  # the peer closed the connection
                except _NotABlockError:
                    log.warning("MLLP from %s: data outside a <VT>...<FS><CR> block", peer)
                    answer = ack(Header(), "AR", "not an MLLP block (missing <VT> start)", "100")
                    writer.writeblock(answer.encode("utf-8"))
                    await writer.drain()
                    continue
                except _TooLargeError:
                    log.warning(
                        "MLLP from %s: message larger than %d bytes refused",
                        peer,
                        self.max_message_bytes,
                    )
                    reason = (
                        f"message larger than {self.max_message_bytes} bytes "
                        "(labeling.mllp_max_message_bytes); it was not read"
                    )
                    writer.writeblock(ack(Header(), "AR", reason, "100").encode("utf-8"))
                    await writer.drain()
                    continue
                header = read_header(block)
                answer = await loop.run_in_executor(self._pool, self._handle, block, header, peer)
                writer.writeblock(answer.encode(header.encoding or "utf-8", "replace"))
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    @staticmethod
    async def _read_block(reader: HL7StreamReader) -> bytes:
        """The next message between <VT> and <FS><CR>.

        python-hl7's own ``readblock`` drops what it holds when a message passes the limit
        and then reads the rest of that message as further "messages": one 10 MB message
        got three answers. Here the rest is skipped up to the message's end, so it gets one.
        """
        try:
            block: bytes = await reader.readuntil(END_BLOCK)
        except asyncio.LimitOverrunError as exc:
            while True:  # drop what can be dropped, up to and with the end of the message
                await reader.readexactly(exc.consumed)
                try:
                    await reader.readuntil(END_BLOCK)
                    break
                except asyncio.LimitOverrunError as again:
                    exc = again
            raise _TooLargeError from None
        if not block.startswith(START_BLOCK):
            raise _NotABlockError
        return block[1 : -len(END_BLOCK)]

    def _allowed(self, address: str) -> bool:
        if not self.allowed_sources:
            return True
        try:
            source = ip_address(address)
        except ValueError:
            return False
        if isinstance(source, IPv6Address) and source.ipv4_mapped is not None:
            source = source.ipv4_mapped
        return any(source in network for network in self.allowed_sources)

    def _handle(self, block: bytes, header: Header, peer: str) -> str:
        """The ACK for one message."""
        control = header.control_id[:40]
        try:
            incoming = parse_oru(decode(block, header))
            result = self.intake.accept(incoming, "hl7")
        except MessageError as exc:
            log.warning("HL7 %s from %s: %s %s", control, peer, exc.code, exc.reason)
            return ack(header, exc.code, exc.reason, exc.error_code)
        except ReportRejectedError as exc:
            log.warning("HL7 %s from %s: AE %s", control, peer, exc)
            return ack(header, "AE", str(exc), "101")
        except ReportStoreError as exc:
            log.error("HL7 %s from %s: AE %s", control, peer, exc)
            reason = "the report could not be stored (catalog unavailable); send it again later"
            return ack(header, "AE", reason, "207")
        except Exception as exc:  # a bug: the message's values may be in the exception text
            log.error(
                "HL7 %s from %s: internal error %s\n%s",
                control,
                peer,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            reason = "the report could not be processed (internal error, logged); it was not stored"
            return ack(header, "AE", reason, "207")
        log.info(
            "HL7 %s from %s: report %s%s",
            control,
            peer,
            result.report_id,
            " (duplicate)" if result.duplicate else "",
        )
        return ack(header, "AA")
