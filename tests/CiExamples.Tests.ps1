#Requires -Version 7.0
# The pipeline examples in docs/examples run one script: here it runs against the sandbox with the environment
# GitHub Actions (after configure-aws-credentials with an OIDC role: temporary keys) and Azure DevOps (the AWS
# Toolkit's credentials) set, non-interactively, and must exit 0 on success and 1 on failure.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    # Temporary credentials, as an assumed role gives them.
    $script:Sandbox = Start-TestSandbox -ExtraArguments @('--rds') -World @{
        credentials = @(@{ accessKeyId = 'ASIASANDBOXROLE00001'; secretAccessKey = 'role/Secret/For/Ci/Tests/Only/0000000000'; sessionToken = 'FQoGZXIvYXdzEXAMPLEsessionTOKEN+/='; userName = 'ci-role' })
    }
    $script:Pg = $Sandbox.postgres
    $script:Rds = $Sandbox.rds
    $script:Script = (Resolve-Path (Join-Path $PSScriptRoot '../docs/examples/Invoke-DbMigration.ps1')).Path

    function Invoke-AdminSql([string] $Sql) {
        $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
        foreach ($a in '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', "$($Pg.port)", '-U', $Pg.user, '-d', $Pg.database, '-c', $Sql) { $psi.ArgumentList.Add($a) }
        $psi.Environment['PGPASSWORD'] = $Pg.password
        $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
        $p = [System.Diagnostics.Process]::Start($psi); $out = $p.StandardOutput.ReadToEnd() + $p.StandardError.ReadToEnd(); $p.WaitForExit()
        if ($p.ExitCode) { throw "psql failed: $out" }
        $out.Trim()
    }
    Invoke-AdminSql 'CREATE ROLE app_migrator LOGIN; GRANT rds_iam TO app_migrator; GRANT CREATE, USAGE ON SCHEMA public TO app_migrator;' | Out-Null

    $script:Dir = Join-Path ([IO.Path]::GetTempPath()) ('bt-ci-' + [guid]::NewGuid().ToString('n'))
    New-Item -ItemType Directory -Path $Dir | Out-Null
    $awsVars = [Environment]::GetEnvironmentVariables().Keys | Where-Object { $_ -like 'AWS_*' -or $_ -like 'GITHUB_*' -or $_ -eq 'TF_BUILD' }
    $script:Remove = @($awsVars)
    $script:Base = @{
        AWS_ACCESS_KEY_ID = 'ASIASANDBOXROLE00001'; AWS_SECRET_ACCESS_KEY = 'role/Secret/For/Ci/Tests/Only/0000000000'
        AWS_SESSION_TOKEN = 'FQoGZXIvYXdzEXAMPLEsessionTOKEN+/='; AWS_REGION = $Sandbox.region; AWS_DEFAULT_REGION = $Sandbox.region
        AWS_EC2_METADATA_DISABLED = 'true'; HOME = $Dir; CI = 'true'
        BASTIONTOOLS_ENDPOINT_URL = $Sandbox.ssm; BASTIONTOOLS_SSL_ROOT_CERT = $Rds.caBundle; BASTION_NAME = 'bastion'
    }
    function Invoke-Migration([hashtable] $Environment, [string] $Sql) {
        $file = Join-Path $Dir ('m-' + [guid]::NewGuid().ToString('n') + '.sql')
        Set-Content -Path $file -Value $Sql
        Invoke-ChildPwsh -RemoveEnvironment $Remove -Environment $Environment -Script @"
& '$Script' -ModulePath '$(Get-TestModulePath)' -DbHost '$($Rds.endpoint)' -Database '$($Pg.database)' -UserName app_migrator -MigrationFile '$file'
exit `$LASTEXITCODE
"@
    }
}

AfterAll {
    Stop-TestSandbox $Sandbox
    Remove-Item $Dir -Recurse -Force -ErrorAction SilentlyContinue
}

Describe 'The pipeline migration script' {
    It 'applies a migration as GitHub Actions runs it (OIDC role credentials), and exits 0' {
        $envs = $Base.Clone(); $envs.GITHUB_ACTIONS = 'true'; $envs.GITHUB_WORKFLOW = 'migrate'; $envs.RUNNER_OS = 'Linux'
        $r = Invoke-Migration $envs "CREATE TABLE gh_items (id int PRIMARY KEY); INSERT INTO gh_items VALUES (1), (2);"
        $r.ExitCode | Should -Be 0 -Because ($r.Output + $r.Error)
        $r.Output | Should -Match 'from GitHub Actions'
        $r.Output | Should -Match 'Migration applied'
        Invoke-AdminSql 'select count(*) from gh_items' | Should -Be '2'
    }

    It 'applies a migration as Azure DevOps runs it, and exits 0' {
        $envs = $Base.Clone(); $envs.TF_BUILD = 'True'; $envs.AGENT_NAME = 'Hosted Agent'; $envs.BUILD_BUILDID = '42'
        $r = Invoke-Migration $envs "CREATE TABLE ado_items (id int); INSERT INTO ado_items VALUES (7);"
        $r.ExitCode | Should -Be 0 -Because ($r.Output + $r.Error)
        $r.Output | Should -Match 'from Azure DevOps'
        Invoke-AdminSql 'select id from ado_items' | Should -Be '7'
    }

    It 'exits 1 on a failing migration, applies none of it, and says why without any secret' {
        $envs = $Base.Clone(); $envs.GITHUB_ACTIONS = 'true'
        $r = Invoke-Migration $envs "CREATE TABLE half_done (id int); INSERT INTO nowhere VALUES (1);"
        $r.ExitCode | Should -Be 1
        $r.Error | Should -Match 'Migration failed: DatabaseQueryFailed'
        $r.Error | Should -Match '42P01'
        Invoke-AdminSql "select count(*) from pg_tables where tablename = 'half_done'" | Should -Be '0'
        ($r.Output + $r.Error) | Should -Not -Match 'role/Secret'
        ($r.Output + $r.Error) | Should -Not -Match 'FQoGZXIvYXdz'
    }

    It 'exits 1 without credentials, never prompting' {
        $envs = $Base.Clone(); $envs.Remove('AWS_ACCESS_KEY_ID'); $envs.Remove('AWS_SECRET_ACCESS_KEY'); $envs.Remove('AWS_SESSION_TOKEN')
        $r = Invoke-Migration $envs 'select 1;'
        $r.ExitCode | Should -Be 1
        $r.Error | Should -Match 'AwsCredentialsNotFound'
    }
}
