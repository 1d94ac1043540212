"""De-identification on arrival: the stage of ``ingest.accept`` that removes PHI in memory.

Public surface: the :class:`Deidentifier` protocol ingest calls, the profile-driven
:class:`ProfileDeidentifier`, the :class:`Pseudonymizer` other parts use to meet images on
the same pseudonyms (report linking), and the encrypted :class:`Vault`.
"""

from deid.base import Deidentified, Deidentifier, DeidRejectedError, PassThroughDeidentifier
from deid.deidentifier import ProfileDeidentifier
from deid.factory import DeidParts, build_deid, load_pseudonymizer
from deid.profile import PROFILE_VERSION, Action, Option, Profile, ProfileError, build_profile
from deid.pseudonym import Pseudonymizer
from deid.secrets import NodeSecrets, SecretsError, load_secrets
from deid.vault import Accessor, Vault, VaultError, VaultRecord

__all__ = [
    "PROFILE_VERSION",
    "Accessor",
    "Action",
    "DeidParts",
    "DeidRejectedError",
    "Deidentified",
    "Deidentifier",
    "NodeSecrets",
    "Option",
    "PassThroughDeidentifier",
    "Profile",
    "ProfileDeidentifier",
    "ProfileError",
    "Pseudonymizer",
    "SecretsError",
    "Vault",
    "VaultError",
    "VaultRecord",
    "build_deid",
    "build_profile",
    "load_pseudonymizer",
    "load_secrets",
]
