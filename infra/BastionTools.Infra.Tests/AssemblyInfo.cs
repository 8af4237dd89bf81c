// One jsii runtime (a Node process) serves the whole test run; CDK object construction is not made concurrent.
[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]
