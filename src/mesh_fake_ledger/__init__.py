"""mesh_fake_ledger: compute-token ledger for a mesh network (built on sardis_ledger)."""
