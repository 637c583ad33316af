"""Helpers of ``medclass demo`` that are not pipeline stages: run profiles, where Grad-CAM points, the index page.

- :mod:`~medclass.demo.profiles`: :class:`Profile` and the :data:`PROFILES` table (``quick``, ``full``).
- :mod:`~medclass.demo.localisation`: the Grad-CAM hit rate on images whose lesion position is known.
- :mod:`~medclass.demo.index`: the demo's ``index.html`` from plain data, and a description of the hardware.

``medclass.cli.demo`` calls the stages themselves (synth, ``manifest build``, ``train``, ``evaluate``,
``explain``) and uses these helpers around them.
"""

from __future__ import annotations

from medclass.demo.profiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "Profile", "get_profile"]
