<#
.SYNOPSIS
    IAM PostgreSQL benchmarks: the engine (IAM data source through the tunnel and the RDS-IAM double against a direct
    connection, same run), then the cmdlets a user types: cold Connect-IamPostgres to the first row in a fresh
    PowerShell, and rows per second of a 1M-row Invoke-IamPostgresQuery through the pipeline.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [string] $SandboxPath = $env:BASTIONTOOLS_SANDBOX,
    # Rows of the pipeline measurement. On a loaded machine a 1M-row run can stall the process for 2 s while 8 MiB
    # wait in the tunnel, and the tunnel resets that connection ('Exception while reading from stream'): 200000
    # stays under 8 MiB.
    [int] $PipelineRows = 1000000,
    # Another build of the module (e.g. one from before issue 11: git worktree add ../base 9a0ff30; build it there) to
    # measure against in the same run: each module in a fresh PowerShell, alternating, through the same sandbox.
    [string] $BaselineModulePath,
    [int] $BaselineRounds = 3
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'
if (-not $SandboxPath -or -not (Test-Path $SandboxPath)) { throw "The sandbox is not built ('$SandboxPath'): run ./build.ps1 -Task Bench." }

Write-Host '-- engine (C#)'
$engine = & dotnet run --project (Join-Path $PSScriptRoot 'BastionTools.Bench') -c Release -- iam --sandbox $SandboxPath
if ($LASTEXITCODE) { throw "the IAM benchmark failed ($LASTEXITCODE)" }
$engine | Out-Host
# The engine's rows/s under the cmdlet (Npgsql through the IAM data source and the tunnel, same query), for the ratio below.
$engineRows = 0.0
if (($engine -join "`n") -match '1M-row streamed query.*IAM\+tunnel\s+([\d.,\s]+?)\s+rows/s') { $engineRows = [double]($Matches[1] -replace '[^\d]', '') }
# The same with the cmdlet's row objects built (RowStream) but no pipeline: the ceiling of the module's own half.
$builtRows = 0.0; $builtCpu = ''
if (($engine -join "`n") -match 'no pipeline \(RowStream.*IAM\+tunnel\s+([\d.,\s]+?)\s+rows/s\s+process CPU per 1M rows\s+([\d.,]+) ms') {
    $builtRows = [double]($Matches[1] -replace '[^\d]', ''); $builtCpu = $Matches[2]
}

# The pipeline alone: rows of the cmdlet's shape (a PSObject with note properties g [int] and label [string]) built in
# memory first, then written one by one by a compiled cmdlet into the same | Measure-Object. What PowerShell itself
# allows on this machine, whatever the module does.
$benchSource = @'
using System.Management.Automation;

[Cmdlet("Write", "BenchRow")]
public sealed class WriteBenchRowCommand : PSCmdlet
{
    [Parameter(Mandatory = true)]
    public PSObject[] Rows { get; set; }

    // Rows written: Rows over and over (default: each once).
    [Parameter]
    public int Count { get; set; } = -1;

    protected override void EndProcessing()
    {
        var n = Count < 0 ? Rows.Length : Count;
        for (int i = 0, j = 0; i < n; i++, j = j + 1 == Rows.Length ? 0 : j + 1) WriteObject(Rows[j]);
    }

    public static PSObject[] Build(int n)
    {
        var rows = new PSObject[n];
        for (var i = 0; i < n; i++)
        {
            var row = new PSObject();
            row.Properties.Add(new PSNoteProperty("g", i + 1), true);
            row.Properties.Add(new PSNoteProperty("label", "row " + (i + 1)), true);
            rows[i] = row;
        }
        return rows;
    }
}
'@

Write-Host '-- cmdlets'
$psi = [System.Diagnostics.ProcessStartInfo]::new('dotnet')
# The agent without its 1 ms pause per 1 KiB read (--output-read-pause-ms 0): the module is measured, not the agent's cap.
foreach ($a in $SandboxPath, '--rds', '--output-read-pause-ms', '0') { $psi.ArgumentList.Add($a) }
$psi.RedirectStandardInput = $true; $psi.RedirectStandardOutput = $true; $psi.UseShellExecute = $false
$sandboxProcess = [System.Diagnostics.Process]::Start($psi)
try {
    $sb = $sandboxProcess.StandardOutput.ReadLine() | ConvertFrom-Json
    $env:PGPASSWORD = $sb.postgres.password
    & psql -X -q -h 127.0.0.1 -p $sb.postgres.port -U $sb.postgres.user -d $sb.postgres.database -c "CREATE ROLE bench_cmd LOGIN; GRANT rds_iam TO bench_cmd" | Out-Null
    Remove-Item env:PGPASSWORD
    $common = "-DbHost '$($sb.rds.endpoint)' -Database '$($sb.postgres.database)' -SslRootCertificate '$($sb.rds.caBundle)' -UserName bench_cmd -AccessKey '$($sb.accessKeyId)' -SecretKey '$($sb.secretAccessKey)' -Region '$($sb.region)' -EndpointUrl '$($sb.ssm)'"
    $pwsh = [Environment]::ProcessPath
    $prefix = @(); if ([IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { $prefix = @(Join-Path $PSHOME 'pwsh.dll') }
    $cold = 1..3 | ForEach-Object {
        $script = "Import-Module '$ModulePath'; `$sw = [Diagnostics.Stopwatch]::StartNew(); `$c = Connect-IamPostgres -Name bastion $common; `$null = Invoke-IamPostgresQuery -Connection `$c -Query 'select 1'; `$sw.Stop(); `$c | Disconnect-IamPostgres; `$sw.Elapsed.TotalMilliseconds"
        [double](& $pwsh @prefix -NoProfile -NonInteractive -Command $script | Select-Object -Last 1)
    } | Sort-Object
    'cold Connect-IamPostgres -> first row (fresh pwsh)   median {0,7:F0} ms   (runs: {1})' -f $cold[1], (($cold | ForEach-Object { '{0:F0}' -f $_ }) -join ', ')

    Import-Module $ModulePath -Force
    $c = Invoke-Expression "Connect-IamPostgres -Name bastion $common"
    $null = Invoke-IamPostgresQuery -Connection $c -Query 'select 1'
    $million = "select g, 'row ' || g as label from generate_series(1, $PipelineRows) g"
    # Warm-up: PowerShell keeps jitting new code, which holds .NET's tiered JIT back; the first pipelines of a process
    # run on unoptimised code at a fraction of the steady rate (seen: 50k rows/s on the first 200k rows, 300k-480k
    # from the fourth on). Four 200k-row pipelines first, so the figures below are the steady state.
    foreach ($w in 1..4) { $null = Invoke-IamPostgresQuery -Connection $c -Query "select g, 'row ' || g as label from generate_series(1, 200000) g" | Measure-Object }
    # The process's own counters around each pipeline: CPU time (all threads: the cmdlet, Npgsql, the tunnel's data
    # channel) and bytes allocated on the managed heap (all threads).
    $self = [System.Diagnostics.Process]::GetCurrentProcess()
    # The other processes that work for each row: the sandbox (the agent double) and the PostgreSQL backend of the
    # pooled connection (its CPU from /proc, where there is one).
    $backend = [int](Invoke-IamPostgresQuery -Connection $c -Query 'select pg_backend_pid() as pid').pid
    function Get-BackendCpu {
        $stat = "/proc/$backend/stat"
        if (-not (Test-Path $stat)) { return [double]::NaN }
        $f = ((Get-Content $stat -Raw) -replace '^.*\) ', '') -split ' '
        ([double]$f[11] + [double]$f[12]) * 10   # utime + stime, in clock ticks of 10 ms (USER_HZ 100)
    }
    function Measure-Pipeline([scriptblock] $Pipeline) {
        [GC]::Collect(); [GC]::WaitForPendingFinalizers()
        $sandboxProcess.Refresh(); $agent0 = $sandboxProcess.TotalProcessorTime; $pg0 = Get-BackendCpu
        $self.Refresh(); $cpu0 = $self.TotalProcessorTime
        $alloc0 = [GC]::GetTotalAllocatedBytes($true)
        $sw = [Diagnostics.Stopwatch]::StartNew()
        $n = (& $Pipeline).Count
        $sw.Stop()
        $alloc = [GC]::GetTotalAllocatedBytes($true) - $alloc0
        $self.Refresh(); $sandboxProcess.Refresh()
        [pscustomobject]@{ Count = $n; Rows = $n / $sw.Elapsed.TotalSeconds; Wall = $sw.Elapsed.TotalMilliseconds
                           Cpu = ($self.TotalProcessorTime - $cpu0).TotalMilliseconds * 1e6 / $n; Alloc = $alloc / $n
                           Agent = ($sandboxProcess.TotalProcessorTime - $agent0).TotalMilliseconds * 1e6 / $n
                           Postgres = ((Get-BackendCpu) - $pg0) * 1e6 / $n }
    }
    function Get-Median($Values) { $s = @($Values | Sort-Object); $s[[int][Math]::Floor(($s.Count - 1) / 2)] }

    # Reference, same run: the pipeline alone. One 512-row batch of prebuilt rows (fresh in the CPU's caches, as a batch
    # the reader thread has just built) written again and again, -PipelineRows in all: what PowerShell itself allows.
    $benchType = Add-Type -TypeDefinition $benchSource -PassThru | Select-Object -First 1
    Import-Module -Assembly $benchType.Assembly -Force
    $batch = $benchType::Build(512)
    $null = Write-BenchRow -Rows $batch -Count 200000 | Measure-Object   # warm-up

    # Three runs of each, alternating, so a load that changes during the bench touches both alike; medians below.
    $runs = foreach ($r in 1..3) {
        [pscustomobject]@{
            Cmdlet = Measure-Pipeline { Invoke-IamPostgresQuery -Connection $c -Query $million | Measure-Object }
            Alone = Measure-Pipeline { Write-BenchRow -Rows $batch -Count $PipelineRows | Measure-Object }
        }
    }
    $n = $runs[0].Cmdlet.Count
    $pipeRows = Get-Median $runs.Cmdlet.Rows
    $aloneRows = Get-Median $runs.Alone.Rows
    'Invoke-IamPostgresQuery, {1:N0} rows through the pipeline   {0,10:N0} rows/s median of 3 (runs: {2})' -f $pipeRows, $n, (($runs.Cmdlet | ForEach-Object { '{0:N0}' -f $_.Rows }) -join ', ')
    if ($engineRows -gt 0) {
        '  | Measure-Object vs the engine underneath (C# run above, same query)   {0:N0} / {1:N0} rows/s = {2:P0}' -f $pipeRows, $engineRows, ($pipeRows / $engineRows)
    }
    '  process CPU per 1M rows {0,7:N0} ms median (Process.TotalProcessorTime delta, all threads; runs: {1})' -f (Get-Median $runs.Cmdlet.Cpu), (($runs.Cmdlet | ForEach-Object { '{0:N0}' -f $_.Cpu }) -join ', ')
    '  allocated per row       {0,7:N0} bytes (GC.GetTotalAllocatedBytes(precise) delta / rows)' -f (Get-Median $runs.Cmdlet.Alloc)
    $agentCpu = Get-Median $runs.Cmdlet.Agent; $pgCpu = Get-Median $runs.Cmdlet.Postgres
    $allCpu = (Get-Median $runs.Cmdlet.Cpu) + $agentCpu + $(if ([double]::IsNaN($pgCpu)) { 0 } else { $pgCpu })
    '  CPU of the other processes per 1M rows: agent double {0:N0} ms, PostgreSQL backend {1:N0} ms; all three {2:N0} ms, so {3} cores allow at most {4:N0} rows/s' -f $agentCpu, $pgCpu, $allCpu, [Environment]::ProcessorCount, ([Environment]::ProcessorCount * 1e9 / $allCpu)
    '  ceiling, the pipeline alone: prebuilt rows of the same shape, compiled cmdlet | Measure-Object   {0,10:N0} rows/s   process CPU per 1M rows {1,6:N0} ms   allocated per row {2:N0} bytes   (medians of 3)' -f $aloneRows, (Get-Median $runs.Alone.Cpu), (Get-Median $runs.Alone.Alloc)
    if ($builtRows -gt 0) {
        '  ceiling, the module without the pipeline: engine + rows built and dropped (C# run above)   {0,10:N0} rows/s   process CPU per 1M rows {1,6} ms' -f $builtRows, $builtCpu
    }
    '  goal 2x the original 322,585 = 645,170 rows/s; the cmdlet reaches {0:P0} of the pipeline alone' -f ($pipeRows / $aloneRows)

    # Time to first row: each row carries clock_timestamp(), the moment PostgreSQL produced it (same host, same clock);
    # the first object is stamped with [DateTime]::UtcNow when it reaches the next command (Select-Object -First 1 ends
    # the pipeline; the rest is read and dropped). First row out = arrival - produced, for a query that goes on to stream -PipelineRows rows.
    $ttfr = 1..5 | ForEach-Object {
        $first = Invoke-IamPostgresQuery -Connection $c -Query "select clock_timestamp() as produced, g from generate_series(1, $PipelineRows) g" |
            ForEach-Object { [pscustomobject]@{ Arrived = [DateTime]::UtcNow; Produced = $_.produced } } | Select-Object -First 1
        ($first.Arrived - $first.Produced.ToUniversalTime()).TotalMilliseconds
    } | Sort-Object
    '  first row out           {0,7:F1} ms median (runs: {1}) from PostgreSQL producing row 1 (clock_timestamp()) to the object reaching the next command' -f $ttfr[2], (($ttfr | ForEach-Object { '{0:F1}' -f $_ }) -join ', ')
    $t2 = Measure-Command { 1..1000 | ForEach-Object { $null = Invoke-IamPostgresQuery -Connection $c -Query 'select 1' } }
    'Invoke-IamPostgresQuery, 1000 small queries            {0,7:F0} ms ({1:F2} ms each)' -f $t2.TotalMilliseconds, ($t2.TotalMilliseconds / 1000)
    $c | Disconnect-IamPostgres

    if ($BaselineModulePath) {
        # Same run, same sandbox, same query: each module imported into a fresh PowerShell (two builds of one module
        # cannot share a process), warmed up as above, then three 1M-row pipelines; alternating, so a load that changes
        # touches both alike. The ratio is the figure to read: this machine's speed varies between runs.
        $child = @'
$ErrorActionPreference = 'Stop'; $env:AWS_EC2_METADATA_DISABLED = 'true'
Import-Module '{0}'
$c = Connect-IamPostgres -Name bastion {1}
$null = Invoke-IamPostgresQuery -Connection $c -Query 'select 1'
foreach ($w in 1..4) {{ $null = Invoke-IamPostgresQuery -Connection $c -Query "select g, 'row ' || g as label from generate_series(1, 200000) g" | Measure-Object }}
$rates = foreach ($r in 1..3) {{
    [GC]::Collect()
    $sw = [Diagnostics.Stopwatch]::StartNew()
    $n = (Invoke-IamPostgresQuery -Connection $c -Query "{2}" | Measure-Object).Count
    $sw.Stop()
    if ($n -ne {3}) {{ throw "$n rows instead of {3}" }}
    $n / $sw.Elapsed.TotalSeconds
}}
$c | Disconnect-IamPostgres
($rates | Sort-Object)[1]
'@
        $modules = [ordered]@{ baseline = (Resolve-Path $BaselineModulePath).Path; 'this build' = (Resolve-Path $ModulePath).Path }
        $rates = @{ baseline = @(); 'this build' = @() }
        foreach ($round in 1..$BaselineRounds) {
            foreach ($name in $modules.Keys) {
                $script = $child -f $modules[$name], $common, $million, $PipelineRows
                $out = & $pwsh @prefix -NoProfile -NonInteractive -Command $script
                if ($LASTEXITCODE) { throw "the $name run failed ($LASTEXITCODE)" }
                $rates[$name] += [double]($out | Select-Object -Last 1)
            }
        }
        $b = Get-Median $rates.baseline; $t = Get-Median $rates.'this build'
        'same run against {0}: Invoke-IamPostgresQuery | Measure-Object, {1:N0} rows, median of {2} fresh processes each (each the median of 3 pipelines)' -f $BaselineModulePath, $PipelineRows, $BaselineRounds
        '  baseline   {0,10:N0} rows/s (runs: {1})' -f $b, (($rates.baseline | ForEach-Object { '{0:N0}' -f $_ }) -join ', ')
        '  this build {0,10:N0} rows/s (runs: {1})' -f $t, (($rates.'this build' | ForEach-Object { '{0:N0}' -f $_ }) -join ', ')
        '  ratio {0:F2}x (goal 2x the build of the issue: 9a0ff30)' -f ($t / $b)
    }
}
finally {
    $sandboxProcess.StandardInput.Close()
    if (-not $sandboxProcess.WaitForExit(20000)) { $sandboxProcess.Kill($true) }
}
