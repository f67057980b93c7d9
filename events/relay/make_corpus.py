#!/usr/bin/env python3
"""Writes the raw-mail corpus the ingest tests read (events/relay/*.eml).

Each file wraps the same CSV (ib_calls_2024-03-14_sample.csv, the first 25 calls of the
morning export) in a different way mail clients and servers really do it; the tests check
that every good one gives exactly the rows of the plain CSV and that every bad one is
quarantined with its reason. The files are committed: run this only to change the corpus
(python3 events/relay/make_corpus.py). Headers are written by hand, not by the email package,
so the awkward forms (RFC 2231 continuations, RFC 2047 names, LF-only lines) stay as written.
"""
import base64
import pathlib
import quopri

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE.parent / "mailbox" / "ib_calls_2024-03-14_morning.csv"
lines = SOURCE.read_bytes().split(b"\n")
CSV = b"\n".join(lines[:26]) + b"\n"
(HERE / "ib_calls_2024-03-14_sample.csv").write_bytes(CSV)

FROM = "From: Dialer Exports <exports@dialer.example>"
TO = "To: ops-reports@contoso.example"
DATE = "Date: Thu, 14 Mar 2024 12:05:11 +0000"
SUBJECT = "Subject: IB calls export 2024-03-14 (00:00-12:00)"
RECEIVED = ("Received: from mx.dialer.example (mx.dialer.example [192.0.2.10]) by mail.contoso.example\n"
            " with ESMTPS id 4Tw9; Thu, 14 Mar 2024 12:05:13 +0000")


def b64(data):
    text = base64.b64encode(data).decode()
    return "\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def head(msgid, extra=()):
    return [RECEIVED, FROM, TO, DATE, SUBJECT, f"Message-ID: <{msgid}@dialer.example>",
            "MIME-Version: 1.0", *extra]


def mixed(msgid, attachment_headers, body, boundary="=_b1", extra=()):
    return "\n".join(head(msgid, [f'Content-Type: multipart/mixed; boundary="{boundary}"', *extra]) + [
        "", "This is a multi-part message in MIME format.", "",
        f"--{boundary}", "Content-Type: text/plain; charset=utf-8", "",
        "Attached: today's export.", "",
        f"--{boundary}", *attachment_headers, "", body, f"--{boundary}--", ""])


def write(name, text, crlf=False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    if crlf:
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    (HERE / name).write_bytes(data)


NAME = "ib_calls_2024-03-14_morning.csv"

# 1. The common form: text/csv, attachment disposition, base64, CRLF lines.
write("plain.eml", mixed("plain", [
    f'Content-Type: text/csv; charset=utf-8; name="{NAME}"',
    f'Content-Disposition: attachment; filename="{NAME}"',
    "Content-Transfer-Encoding: base64"], b64(CSV)), crlf=True)

# 2. application/octet-stream named only in Content-Type, no disposition at all.
write("octet-stream.eml", mixed("octet", [
    f"Content-Type: application/octet-stream; name={NAME}",
    "Content-Transfer-Encoding: base64"], b64(CSV)))

# 3. Excel's type for a .csv, disposition inline (what some exporters send).
write("vnd-ms-excel-inline.eml", mixed("excel", [
    f'Content-Type: application/vnd.ms-excel; name="{NAME}"',
    f'Content-Disposition: inline; filename="{NAME}"',
    "Content-Transfer-Encoding: base64"], b64(CSV)))

# 4. RFC 2231: a percent-encoded UTF-8 name split over continuations.
write("rfc2231-continuations.eml", mixed("rfc2231", [
    "Content-Type: text/csv",
    "Content-Disposition: attachment;",
    " filename*0*=UTF-8''ib%5Fcalls%5F2024-03-14%5F;",
    " filename*1*=morning%5FZ%C3%BCrich.csv",
    "Content-Transfer-Encoding: base64"], b64(CSV)))

# 5. RFC 2047 encoded words in the quoted name (Outlook and Gmail do this, against RFC 2231).
write("rfc2047-name.eml", mixed("rfc2047", [
    'Content-Type: text/csv; name="=?UTF-8?B?aWJfY2FsbHNfMjAyNC0wMy0xNF9aw7xyaWNoLmNzdg==?="',
    'Content-Disposition: attachment; filename="=?utf-8?Q?ib=5Fcalls=5F2024-03-14=5FZ=C3=BCrich.csv?="',
    "Content-Transfer-Encoding: base64"], b64(CSV)))

# 6. Quoted-printable text/csv (the BOM and the non-ASCII names as =XX escapes).
qp = quopri.encodestring(CSV).decode("ascii")
write("quoted-printable.eml", mixed("qp", [
    f'Content-Type: text/csv; charset="utf-8"; name="{NAME}"',
    f'Content-Disposition: attachment; filename="{NAME}"',
    "Content-Transfer-Encoding: quoted-printable"], qp.rstrip("\n")))

# 7. 8bit: the CSV as it is, no transfer encoding, LF lines.
write("8bit.eml", mixed("8bit", [
    f'Content-Type: text/csv; charset=utf-8; name="{NAME}"',
    f'Content-Disposition: attachment; filename="{NAME}"',
    "Content-Transfer-Encoding: 8bit"], CSV.decode("utf-8").rstrip("\n")).encode("utf-8"))

# 8. The whole mail is the attachment (no multipart).
write("single-part.eml", "\n".join(head("single", [
    f'Content-Type: text/csv; charset=utf-8; name="{NAME}"',
    f'Content-Disposition: attachment; filename="{NAME}"',
    "Content-Transfer-Encoding: base64"]) + ["", b64(CSV), ""]))

# 9. Forwarded as an attachment: the export is inside a message/rfc822 part.
inner = "\n".join([
    "From: Dialer Exports <exports@dialer.example>", "To: someone@contoso.example", DATE,
    SUBJECT, "Message-ID: <inner@dialer.example>", "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="=_inner"', "",
    "--=_inner", "Content-Type: text/plain", "", "Today's export.", "",
    "--=_inner", f'Content-Type: text/csv; name="{NAME}"',
    f'Content-Disposition: attachment; filename="{NAME}"', "Content-Transfer-Encoding: base64",
    "", b64(CSV), "--=_inner--", ""])
write("forwarded-rfc822.eml", mixed("forwarded", [
    "Content-Type: message/rfc822", 'Content-Disposition: attachment; filename="export.eml"'],
    inner, boundary="=_outer"))

# 10. S/MIME signed (multipart/signed): the signature part is not a file to ingest.
signed_part = "\n".join([
    'Content-Type: multipart/mixed; boundary="=_signed_inner"', "",
    "--=_signed_inner", "Content-Type: text/plain", "", "Signed export.", "",
    "--=_signed_inner", f'Content-Type: text/csv; name="{NAME}"',
    f'Content-Disposition: attachment; filename="{NAME}"', "Content-Transfer-Encoding: base64",
    "", b64(CSV), "--=_signed_inner--"])
write("smime-signed.eml", "\n".join(head("signed", [
    'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="=_sig"']) + [
    "", "--=_sig", signed_part, "", "--=_sig",
    'Content-Type: application/pkcs7-signature; name="smime.p7s"',
    'Content-Disposition: attachment; filename="smime.p7s"', "Content-Transfer-Encoding: base64", "",
    b64(b"0\x82\x05\x00" + bytes(range(64))), "--=_sig--", ""]), crlf=True)

# 11. Nested multipart/alternative body plus the CSV, and a second unrelated attachment.
write("alternative-and-two-files.eml", "\n".join(head("alt", ['Content-Type: multipart/mixed; boundary="=_m"']) + [
    "", "--=_m", 'Content-Type: multipart/alternative; boundary="=_a"', "",
    "--=_a", "Content-Type: text/plain; charset=utf-8", "", "Export attached.", "",
    "--=_a", "Content-Type: text/html; charset=utf-8", "", "<p>Export attached.</p>", "",
    "--=_a--", "", "--=_m", 'Content-Type: image/png; name="logo.png"',
    'Content-Disposition: inline; filename="logo.png"', "Content-Transfer-Encoding: base64", "",
    b64(b"\x89PNG\r\n\x1a\n" + bytes(32)), "--=_m", f'Content-Type: text/csv; name="{NAME}"',
    f'Content-Disposition: attachment; filename="{NAME}"', "Content-Transfer-Encoding: base64", "",
    b64(CSV), "--=_m--", ""]))

# Bad ones: each must be quarantined with its reason.
# TNEF: Outlook's winmail.dat and nothing else.
write("bad-tnef-winmail.eml", mixed("tnef", [
    'Content-Type: application/ms-tnef; name="winmail.dat"',
    'Content-Disposition: attachment; filename="winmail.dat"', "Content-Transfer-Encoding: base64"],
    b64(b"\x78\x9f\x3e\x22" + bytes(120))))
# Cut short in the middle of the attachment's base64.
plain = (HERE / "plain.eml").read_bytes()
write("bad-truncated.eml", plain[: len(plain) // 2])
# Not a mail at all: the CSV itself with a .eml name.
write("bad-not-mail.eml", CSV)
print("corpus written to", HERE)
