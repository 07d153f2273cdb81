"""``moddep verify`` and its companions ``why``, ``graph`` and ``diff``: checks of a module
directory's indexes and modules that no other tool gives.

* :mod:`~moddep.verify.run`: one verify run (recompute, compare, lint) -> findings;
* :mod:`~moddep.verify.compare`: what index files mean, and how two of them differ;
* :mod:`~moddep.verify.lint`: checks on the modules (symbols, CRCs, vermagic, firmware, ...);
* :mod:`~moddep.verify.findings`: the finding codes, severities and groups (one table);
* :mod:`~moddep.verify.report`: text, JSON and JUnit XML;
* :mod:`~moddep.verify.installed`: an installed module directory read from its indexes
  (``why``, ``graph``, ``diff``);
* :mod:`~moddep.verify.kernel`, :mod:`~moddep.verify.firmware`,
  :mod:`~moddep.verify.rootpaths`, :mod:`~moddep.verify.target`: where things are in a root.
"""
