"""SgMg's own parts (LoSh-S and its `sgmg` baseline): multi-scale deformable attention and transformer, spectrum-guided fusion, the dynamic mask head and multi-granularity refinement."""
