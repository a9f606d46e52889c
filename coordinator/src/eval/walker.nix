# Kiln's jobset walker, run by `nix-instantiate --eval` with the request as `--argstr kilnRequest`.
#
# It evaluates the attribute paths it is given, in order, and reports each on stderr through
# `builtins.trace` as lines `trace: <marker>S<path>` (started), then `<marker>R<record>` (the
# result) or, when not alone, `<marker>C` (a `throw` or failed `assert`, caught by `tryEval`, whose
# message the coordinator gets by evaluating the path again alone). Any other failure (abort,
# infinite recursion, type errors, running out of memory or stack) ends the process; the last
# started path is then the one that failed, and Nix's message follows its start line.
#
# Attribute sets found on the way are walked by the same process within a budget of paths (see
# `takes`). A record is one of:
#   { kind = "job"; drvPath; meta; aggregate = null | { drvs; names; glob; }; }
#   { kind = "attrs"; names = [ ... ]; }   # an attribute set that is not a derivation
#   { kind = "skip"; type = "..."; }        # anything else: not a job
{ kilnRequest }:
let
  request = builtins.fromJSON kilnRequest;
  marker = request.marker;
  emit = tag: payload: value: builtins.trace "${marker}${tag}${payload}" value;

  # The jobset's inputs, as Hydra passes them: strings and booleans as they are, checkouts as
  # paths, git inputs as attribute sets with `outPath` and the revision.
  inputValue = input:
    if input.type == "path" then /. + input.path
    else if input.type == "git" then {
      outPath = /. + input.path;
      inherit (input) rev shortRev;
    }
    else input.value;
  inputs = builtins.mapAttrs (_: inputValue) (request.inputs or { });

  callWithInputs = f: f (builtins.intersectAttrs (builtins.functionArgs f) inputs);

  # Functions found inside the jobset are called with the inputs they ask for, as Hydra does;
  # only functions with named arguments, since `x: ...` cannot be told from `{ }: ...` here and
  # helper functions should not be called with an empty set.
  autoCall = v:
    if builtins.isFunction v && builtins.functionArgs v != { } then callWithInputs v else v;

  root =
    if request.source == "flake" then
      let outputs = (builtins.getFlake request.flakeRef).outputs;
      in
      if outputs ? hydraJobs then outputs.hydraJobs
      else if outputs ? checks then outputs.checks
      else throw "flake '${request.flakeRef}' provides neither 'hydraJobs' nor 'checks'"
    else
      let top = import (/. + request.expression);
      in if builtins.isFunction top then callWithInputs top else top;

  lookup = path: builtins.foldl' (value: name: autoCall value.${name}) root path;

  isDerivation = v: (v.type or null) == "derivation";

  # Meta values are free-form: keep what JSON can hold, drop functions, cut deep nesting, and
  # let a field that fails to evaluate become null rather than fail the job.
  sanitize = depth: v:
    let type = builtins.typeOf v;
    in
    if depth > 6 then null
    else if type == "set" then
      (if isDerivation v then v.name or null else builtins.mapAttrs (_: sanitize (depth + 1)) v)
    else if type == "list" then map (sanitize (depth + 1)) v
    else if type == "lambda" then null
    else if type == "path" then toString v
    else v;
  safe = v:
    let r = builtins.tryEval (let s = sanitize 0 v; in builtins.deepSeq s s);
    in if r.success then r.value else null;
  metaOf = drv:
    let
      tried = builtins.tryEval (let m = drv.meta or { }; in if builtins.isAttrs m then m else { });
      meta = if tried.success then tried.value else { };
      field = name: if meta ? ${name} then safe meta.${name} else null;
    in
    {
      description = field "description";
      license = field "license";
      homepage = field "homepage";
      maintainers = field "maintainers";
      schedulingPriority = field "schedulingPriority";
      timeout = field "timeout";
      maxSilent = field "maxSilent";
    };

  # Constituents given as derivations are found through the string context (as Hydra does);
  # constituents given as plain strings are job names, resolved after the whole evaluation.
  aggregateOf = drv:
    let
      constituents = drv.constituents;
      context = builtins.getContext (toString constituents);
    in
    {
      drvs = builtins.filter (p: context.${p} ? outputs) (builtins.attrNames context);
      names = builtins.filter (c: builtins.isString c && !builtins.hasContext c)
        (if builtins.isList constituents then constituents else [ constituents ]);
      glob = drv ? _hydraGlobConstituents && drv._hydraGlobConstituents;
    };

  describe = path:
    let value = lookup path;
    in
    if builtins.isAttrs value then
      (if isDerivation value then {
        kind = "job";
        inherit (value) drvPath;
        meta = metaOf value;
        aggregate =
          if value ? _hydraAggregate && value._hydraAggregate then aggregateOf value else null;
      } else {
        kind = "attrs";
        names = builtins.attrNames value;
      })
    else {
      kind = "skip";
      type = builtins.typeOf value;
    };

  # Evaluates one path and reports it; returns its record, or null when a throw was caught.
  step = path:
    emit "S" (builtins.toJSON path) (
      let
        result =
          if request.alone then { success = true; value = describe path; }
          else builtins.tryEval (let d = describe path; in builtins.deepSeq d d);
      in
      if result.success then emit "R" (builtins.toJSON result.value) result.value
      else emit "C" "" null
    );

  # Attribute sets found are walked in this process too, breadth first, while the number of
  # paths it has taken on stays within the budget; the coordinator applies the same rule to know
  # which paths this process will report and which it must queue for others.
  takes = path: record: total:
    record != null && record.kind == "attrs" && builtins.length path < request.maxDepth
    && total + builtins.length record.names <= request.budget;
  visit = acc: path:
    let
      record = step path;
      children =
        if takes path record acc.total then map (name: path ++ [ name ]) record.names else [ ];
      total = acc.total + builtins.length children;
    in
    builtins.seq record (builtins.seq total {
      inherit total;
      next = acc.next ++ children;
    });
  walk = paths: total:
    if paths == [ ] then null
    else
      let level = builtins.foldl' visit { inherit total; next = [ ]; } paths;
      in walk level.next level.total;
in
walk request.paths (builtins.length request.paths)
