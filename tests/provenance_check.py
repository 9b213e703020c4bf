"""Reading what an output says about how it was made, with readers independent of the pack.

``exiftool`` (Debian's libimage-exiftool-perl) reads the XMP; the c2pa library's own Reader reads
and validates the C2PA manifest against a test certificate chain made here with ``cryptography``:
an ES256 root CA and a signing certificate it issued (digitalSignature, emailProtection EKU).
"""

from __future__ import annotations

import datetime
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@dataclass(frozen=True)
class TestChain:
    root_pem: str
    chain_pem: bytes  # signing certificate, then the root
    key_pem: bytes
    cert_path: Path
    key_path: Path

    def env(self) -> dict[str, str]:
        return {"MODELSWAP_C2PA_CERT": str(self.cert_path), "MODELSWAP_C2PA_KEY": str(self.key_path)}


def make_chain(folder: Path) -> TestChain:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Model Swap tests")])

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                             crl_sign=not sign, encipher_only=False, decipher_only=False)

    now = datetime.datetime.now(datetime.timezone.utc)
    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject, key, serial, ca):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("Test root CA"))
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(usage(sign=not ca), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                             critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                                      critical=False))
        return builder.sign(root_key, hashes.SHA256())

    root = cert("Test root CA", root_key, 1, ca=True)
    leaf = cert("Test signer", leaf_key, 2, ca=False)
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + root.public_bytes(pem)
    key = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "chain.pem").write_bytes(chain)
    (folder / "signer.key").write_bytes(key)
    return TestChain(root.public_bytes(pem).decode(), chain, key, folder / "chain.pem", folder / "signer.key")


def exif_xmp(data: bytes) -> dict:
    """Every XMP tag exiftool finds in ``data``, as ``{"XMP-group:Tag": value}``."""
    exe = shutil.which("exiftool")
    assert exe, "exiftool is missing: apt-get install libimage-exiftool-perl (.ci/run installs it)"
    done = subprocess.run([exe, "-j", "-G1", "-struct", "-XMP:all", "-"], input=data, capture_output=True,
                          check=True, timeout=60)
    (tags,) = json.loads(done.stdout)
    tags.pop("SourceFile", None)
    return tags


def c2pa_manifest(data: bytes, chain: TestChain) -> tuple[dict, str]:
    """(the active manifest, the validation state) as the c2pa Reader sees them, trusting the test root."""
    import c2pa
    from comfyui_model_swap.nodes.pipeline.provenance import c2pa_context

    reader = c2pa.Reader(None, io.BytesIO(data), context=c2pa_context(chain.root_pem))
    return reader.get_active_manifest(), reader.get_validation_state()


def has_c2pa(data: bytes) -> bool:
    import c2pa

    try:
        c2pa.Reader(None, io.BytesIO(data))
    except c2pa.C2paError:
        return False
    return True


def actions(manifest: dict) -> list[dict]:
    (assertion,) = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    return assertion["data"]["actions"]
