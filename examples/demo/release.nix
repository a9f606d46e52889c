# The demo jobset. Hydra (and Kiln) evaluate this file and build every derivation found in it,
# walking nested attribute sets; a job's name is its attribute path (`chain.step3`). Nothing here
# needs nixpkgs or the network: builders are /bin/sh with busybox applets.
#
#   nix-instantiate examples/demo/release.nix        # every job's .drv
#   nix-build examples/demo/release.nix -A hello     # one job
{ system ? builtins.currentSystem }:
let
  inherit (import ./lib.nix { inherit system; }) mkJob nested;
  packages = import ./packages.nix { inherit mkJob nested; };
  pipeline = import ./pipeline.nix { inherit mkJob nested; };
  checks = import ./checks.nix { inherit mkJob nested; inherit (packages) hello; };
in
{
  inherit (packages) hello;

  packages = nested {
    inherit (packages) greeting greeting-tree shout libdemo uses-libdemo structured;
  };

  inherit (pipeline) chain fanin;
  inherit (checks) tests docs;

  # An aggregate job: succeeds only when every constituent does. Constituents given as
  # derivations are inputs already; a constituent given by name ("docs.manual") is added to
  # the aggregate's inputs by Hydra's evaluator after the whole jobset is evaluated.
  release = mkJob {
    name = "demo-release";
    _hydraAggregate = true;
    constituents = [
      packages.hello
      packages.shout
      pipeline.chain.step8
      pipeline.fanin.combined
      "docs.manual"
    ];
    script = ''
      mkdir -p $out
      for c in $constituents; do echo "$c"; done > $out/constituents
    '';
    meta = {
      description = "Everything that must pass for a release";
      schedulingPriority = 300;
    };
  };

  # Not a derivation and not an attribute set: Hydra skips it.
  version = "1.0";
}
