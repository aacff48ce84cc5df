"""The fleet's private PKI (pulumi-tls): a CA, the one server certificate every worker presents,
and with mutual TLS a client certificate for the coordinator.

The server certificate names FLEET_TLS_NAME, not an address: the coordinator connects by IP and
verifies that name against the pinned CA, so fixed and pooled instances share one certificate.
Private keys exist only as Pulumi secrets (encrypted in state) and in SSM as SecureStrings.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from stripes.roles import FLEET_TLS_NAME

CA_VALIDITY_HOURS = 10 * 365 * 24  # rotating the CA means touching every client: rare, by hand (infra/README.md)
LEAF_VALIDITY_HOURS = 365 * 24
# `pulumi up` in the last 30 days of a leaf's life issues a new one (hosts pick it up within a minute).
EARLY_RENEWAL_HOURS = 30 * 24
KEY = {"algorithm": "ECDSA", "ecdsa_curve": "P256"}
CA_USES = ["cert_signing", "crl_signing", "digital_signature"]
SERVER_USES = ["digital_signature", "server_auth"]
CLIENT_USES = ["digital_signature", "client_auth"]
CLIENT_NAME = "coordinator"


@dataclass
class FleetTlsArgs:
    project: str
    stack: str
    client_certificate: bool = False  # mutual TLS: also issue the coordinator's certificate


class FleetTls(pulumi.ComponentResource):
    ca_cert_pem: pulumi.Output[str]
    server_cert_pem: pulumi.Output[str]
    server_key_pem: pulumi.Output[str]  # secret
    client_cert_pem: pulumi.Output[str] | None  # secret; None without mutual TLS
    client_key_pem: pulumi.Output[str] | None  # secret

    def __init__(self, name: str, args: FleetTlsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("htp:infra:FleetTls", name, None, opts)
        self._name = name
        child = pulumi.ResourceOptions(parent=self)
        self._ca_key = tls.PrivateKey(f"{name}-ca-key", **KEY, opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=self._ca_key.private_key_pem,
            is_ca_certificate=True,
            # Strict X.509 verification (Python 3.13's default) wants key identifiers on the chain.
            set_subject_key_id=True,
            set_authority_key_id=True,
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=f"{args.project} {args.stack} fleet CA", organization=args.project
            ),
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=CA_USES,
            opts=child,
        )
        self.ca_cert_pem = ca.cert_pem
        self._ca = ca
        self.server_cert_pem, self.server_key_pem = self._leaf("server", FLEET_TLS_NAME, SERVER_USES, [FLEET_TLS_NAME])
        self.client_cert_pem = self.client_key_pem = None
        if args.client_certificate:
            cert, self.client_key_pem = self._leaf("client", CLIENT_NAME, CLIENT_USES, [])
            self.client_cert_pem = pulumi.Output.secret(cert)  # with its key, it opens every worker
        self.register_outputs({"ca_cert_pem": self.ca_cert_pem, "server_cert_pem": self.server_cert_pem})

    def _leaf(
        self, part: str, common_name: str, uses: list[str], dns_names: list[str]
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """A key, a request and a certificate signed by the CA; returns (cert PEM, secret key PEM)."""
        child = pulumi.ResourceOptions(parent=self)
        key = tls.PrivateKey(f"{self._name}-{part}-key", **KEY, opts=child)
        request = tls.CertRequest(
            f"{self._name}-{part}-csr",
            private_key_pem=key.private_key_pem,
            dns_names=dns_names,
            subject=tls.CertRequestSubjectArgs(common_name=common_name),
            opts=child,
        )
        cert = tls.LocallySignedCert(
            f"{self._name}-{part}-cert",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=self._ca_key.private_key_pem,
            ca_cert_pem=self._ca.cert_pem,
            validity_period_hours=LEAF_VALIDITY_HOURS,
            early_renewal_hours=EARLY_RENEWAL_HOURS,
            set_subject_key_id=True,
            allowed_uses=uses,
            opts=child,
        )
        return cert.cert_pem, pulumi.Output.secret(key.private_key_pem)
